"""Streaming change detectors from river (Page-Hinkley, ADWIN), one per signal, as a user would wire them.

Each run's signals are standardised with the normal training runs' robust centre and scale (the
shared :class:`Standardiser`), one detector follows each signal, and a run alarms from the first
step at which any detector reports a drift. The detector's sensitivity (Page-Hinkley's threshold,
ADWIN's delta) is the most sensitive value of a grid at which at most ``target`` of held-out
normal runs alarm -- the same false-alarm budget every method gets.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from river import drift

from rftfm.bench.baselines.base import Baseline, RunCubes, Standardiser


class _RiverBaseline(Baseline):
    grid: tuple[float, ...] = ()
    needs_calibration = False  # calibrated by the grid below

    def make(self, value: float) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, normal: RunCubes) -> None:
        self.std = Standardiser().fit(normal.cube)
        self.value = self.grid[-1]

    def fit_calibrated(self, normal: RunCubes, target: float, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(normal.run_ids))
        n_cal = max(1, len(order) // 3)
        self.fit(normal.subset(np.sort(order[n_cal:])))
        held_out = normal.subset(np.sort(order[:n_cal]))
        for value in self.grid:  # most sensitive first
            rate = float(self._first_alarms(held_out, value).any(axis=1).mean())
            if rate <= target:
                self.value = value
                break
        self.threshold = 0.5

    def _first_alarms(self, runs: RunCubes, value: float) -> np.ndarray:
        z = self.std.apply(runs.cube)  # (R, S, F); missing -> 0
        present = np.isfinite(runs.cube)
        out = np.zeros(runs.steps.shape, dtype=bool)
        for r in range(z.shape[0]):
            detectors = [self.make(value) for _ in range(z.shape[2])]
            for s in range(z.shape[1]):
                if runs.steps[r, s] <= 0:
                    continue
                for f, detector in enumerate(detectors):
                    if present[r, s, f]:
                        detector.update(float(z[r, s, f]))
                        if detector.drift_detected:
                            out[r, s:] = True
                            break
                if out[r, s]:
                    break
        return out & (runs.steps > 0)

    def score(self, runs: RunCubes) -> np.ndarray:
        alarms = self._first_alarms(runs, self.value).astype(float)
        return np.where(runs.steps > 0, alarms, np.nan)


class PageHinkleyBaseline(_RiverBaseline):
    name = "PageHinkley"
    grid = (10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

    def make(self, value: float) -> Any:
        return drift.PageHinkley(min_instances=3, delta=0.5, threshold=value)


class ADWINBaseline(_RiverBaseline):
    name = "ADWIN"
    grid = (0.1, 0.01, 1e-3, 1e-4, 1e-6, 1e-9)

    def make(self, value: float) -> Any:
        return drift.ADWIN(delta=value, grace_period=3, min_window_length=2, clock=1)


STREAMING: dict[str, Callable[[], Baseline]] = {"PageHinkley": PageHinkleyBaseline, "ADWIN": ADWINBaseline}
