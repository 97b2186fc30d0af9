"""Static threshold rules of the kind training platforms ship, and flag-everything.

Rules (a run alarms at the first step where any fires): KL above a limit, grad norm above a
limit, |loss| above a limit (the loader turns a non-finite loss into a missing value), policy entropy below a floor (collapse), reward
dropping more than a margin below its best so far, truncated fraction above a limit. Each
limit is the most extreme value seen in the normal training runs (so no normal training
run would have fired), which is how such limits are usually hand-set.
"""

from __future__ import annotations

import numpy as np

from rftfm.bench.baselines.base import Baseline, RunCubes
from rftfm.fm.cube import CUBE_SIGNALS as SIGNALS

_I = {name: i for i, name in enumerate(SIGNALS)}
UPPER_RULES = ("kl", "grad_norm", "policy_loss", "truncated_ratio")
LOWER_RULES = ("entropy",)


def _reward_drop(cube: np.ndarray) -> np.ndarray:
    """(R, S) best reward so far minus current reward (NaN-safe)."""
    reward = cube[..., _I["reward_mean"]]
    best = np.fmax.accumulate(np.where(np.isfinite(reward), reward, -np.inf), axis=1)
    return np.where(np.isfinite(reward) & np.isfinite(best), best - reward, np.nan)


class StaticRulesBaseline(Baseline):
    name = "StaticRules"
    needs_calibration = False

    def fit(self, normal: RunCubes) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cube = normal.cube
            self.upper = {n: float(np.nanmax(np.abs(cube[..., _I[n]]))) for n in UPPER_RULES}
            self.lower = {n: float(np.nanmin(cube[..., _I[n]])) for n in LOWER_RULES}
            self.max_drop = float(np.nanmax(_reward_drop(cube)))

    def fired(self, runs: RunCubes) -> np.ndarray:
        cube = runs.cube
        fire = np.zeros(cube.shape[:2], dtype=bool)
        with np.errstate(invalid="ignore"):
            for n, limit in self.upper.items():
                v = cube[..., _I[n]]
                fire |= np.isfinite(v) & (np.abs(v) > limit) if np.isfinite(limit) else False
            for n, limit in self.lower.items():
                v = cube[..., _I[n]]
                fire |= np.isfinite(v) & (v < limit) if np.isfinite(limit) else False
            if np.isfinite(self.max_drop):
                fire |= _reward_drop(cube) > self.max_drop
        return fire

    def score(self, runs: RunCubes) -> np.ndarray:
        return np.where(runs.steps > 0, self.fired(runs).astype(float), np.nan)


class FlagEverythingBaseline(Baseline):
    """Alarms at every step of every run (the trivial detector the published labels reward)."""

    name = "FlagEverything"
    needs_calibration = False

    def fit(self, normal: RunCubes) -> None:
        pass

    def score(self, runs: RunCubes) -> np.ndarray:
        return np.where(runs.steps > 0, 1.0, np.nan)
