"""Common frame for detection baselines: fit on normal runs, step scores, calibrated run-level alarms.

Every baseline (and RFT-FM) is judged by the same run-level rule: a run alarms at the first
step whose score exceeds the method's threshold. A baseline's threshold is calibrated like
RFT-FM's, on normal runs only: the model is fitted on two thirds of the normal training runs
and the threshold is the score exceeded by a fraction ``target`` of the run-maximum scores
of the other third (out-of-sample), extrapolated with the same exponential tail as RFT-FM's
(:func:`rftfm.fm.cube.tail_threshold`). Faulty runs are never used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from rftfm.fm import binary_reward, repeat_rewards, reward_identity, unscored
from rftfm.fm.cube import CUBE_SIGNALS as SIGNALS
from rftfm.fm.cube import runs_cube, runs_schedule, tail_threshold
from rftfm.fm.profile import Transform

NORMAL_KINDS = ("normal", "control")


@dataclass
class RunCubes:
    """Raw signals of some runs: cube (R, S, F) NaN padded, steps (R, S) with 0 = absent, and beside them the logged
    learning rate (R, S), the reward identity's units (R, S), the binary-reward rule's (R, S), the
    unscored-completion rule's (R, S) and the repeat-reward rule's (R, S) (the signals never include them; RFT-FM's
    schedule and reward channels read them)."""

    run_ids: list[str]
    cube: np.ndarray
    steps: np.ndarray
    learning_rate: np.ndarray = field(default=None)  # type: ignore[assignment]  # None: all NaN
    identity: np.ndarray = field(default=None)  # type: ignore[assignment]  # None: all 0 (not judged)
    binary: np.ndarray = field(default=None)  # type: ignore[assignment]  # None: all 0 (not judged)
    unscored: np.ndarray = field(default=None)  # type: ignore[assignment]  # None: all 0 (not judged)
    repeats: np.ndarray = field(default=None)  # type: ignore[assignment]  # None: all 0 (not judged)

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            self.learning_rate = np.full(self.steps.shape, np.nan)
        if self.identity is None:
            self.identity = np.zeros(self.steps.shape)
        if self.binary is None:
            self.binary = np.zeros(self.steps.shape)
        if self.unscored is None:
            self.unscored = np.zeros(self.steps.shape)
        if self.repeats is None:
            self.repeats = np.zeros(self.steps.shape)

    @classmethod
    def build(cls, features: pl.DataFrame, run_ids: list[str]) -> "RunCubes":
        cube, steps = runs_cube(features, run_ids)
        n_steps = steps.shape[1]
        identity = reward_identity.runs_units(features, run_ids, n_steps)
        binary = binary_reward.runs_units(features, run_ids, n_steps)
        unscored_units = unscored.runs_units(features, run_ids, n_steps)
        repeats = repeat_rewards.runs_units(features, run_ids, n_steps)
        return cls(
            list(run_ids), cube, steps, runs_schedule(features, run_ids, n_steps), identity, binary, unscored_units,
            repeats,
        )

    def subset(self, index: np.ndarray) -> "RunCubes":
        return RunCubes(
            [self.run_ids[i] for i in index],
            self.cube[index],
            self.steps[index],
            self.learning_rate[index],
            self.identity[index],
            self.binary[index],
            self.unscored[index],
            self.repeats[index],
        )


class Standardiser:
    """asinh on heavy-tailed signals, then robust z-scores (median / MAD over normal steps); NaN -> 0."""

    def fit(self, cube: np.ndarray) -> "Standardiser":
        flat = cube.reshape(-1, cube.shape[-1])
        self.transform = Transform.fit(flat, SIGNALS)
        y = self.transform.apply(flat)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self.center = np.nan_to_num(np.nanmedian(y, axis=0))
            mad = 1.4826 * np.nanmedian(np.abs(y - self.center), axis=0)
            sd = np.nanstd(y, axis=0)
        self.scale = np.where(np.isfinite(mad) & (mad > 1e-6), mad, np.where(np.isfinite(sd) & (sd > 1e-6), sd, 1.0))
        return self

    def apply(self, cube: np.ndarray) -> np.ndarray:
        z = (self.transform.apply(cube) - self.center) / self.scale
        return np.clip(np.nan_to_num(z, nan=0.0), -50.0, 50.0)


class Baseline(ABC):
    """A detector judged by the shared run-level rule."""

    name: str = "baseline"
    needs_calibration = True

    @abstractmethod
    def fit(self, normal: RunCubes) -> None:
        """Fit on normal runs."""

    @abstractmethod
    def score(self, runs: RunCubes) -> np.ndarray:
        """Step scores (R, S); higher = more anomalous; NaN where the step is absent."""

    def fit_calibrated(self, normal: RunCubes, target: float, seed: int = 0) -> None:
        """Fit on 2/3 of the normal runs; threshold from the other 1/3 (out-of-sample)."""
        if not self.needs_calibration:
            self.fit(normal)
            self.threshold = 0.0
            return
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(normal.run_ids))
        n_cal = max(1, len(order) // 3)
        self.fit(normal.subset(np.sort(order[n_cal:])))
        cal = self.score(normal.subset(np.sort(order[:n_cal])))
        run_max = np.nanmax(np.where(np.isfinite(cal), cal, -np.inf), axis=1)
        self.threshold = tail_threshold(run_max[np.isfinite(run_max)], target)  # same tail rule as RFT-FM

    def alarms(self, runs: RunCubes) -> np.ndarray:
        """(R, S) bool: steps whose score exceeds the threshold."""
        scores = self.score(runs)
        return np.where(np.isfinite(scores), scores > self.threshold, False) & (runs.steps > 0)
