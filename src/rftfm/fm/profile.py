"""Step-conditional normal profiles: robust location and scale of every feature at every step.

A profile is learned from normal runs only. Training dynamics drift with the step index
(reward rises, KL grows, lengths shrink), so location and scale are estimated per step,
pooling the neighbouring steps (``window``) of every normal run for robustness: median
and scaled MAD, with a scale floor so that a signal that never moves in normal runs
(e.g. tool errors on a task without tools) still gets a finite, meaningful z-score.

Heavy-tailed magnitudes (KL, grad norm, loss, lengths, advantage spread) are compared on
an ``asinh(x / c)`` scale (``c`` = their typical normal magnitude): linear near zero,
logarithmic for large values, defined for negative values.

Profiles are kept per configuration key ``"task_group|model_size"`` when enough normal
runs of that configuration exist, plus one global profile ``"*"`` (all configurations
pooled) used for configurations never seen in training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from rftfm.signals import names


GLOBAL_KEY = "*"

#: Features compared on an asinh scale (heavy-tailed magnitudes) and fractions in [0, 1] (absolute
#: scale floor), from the signal registry.
LOG_SCALE_FEATURES: frozenset[str] = frozenset(names(scale="log"))
RATE_FEATURES: frozenset[str] = frozenset(names(scale="rate"))

RATE_SCALE_FLOOR = 0.05
RELATIVE_SCALE_FLOOR = 0.1  # of the feature's global normal scale
ABSOLUTE_SCALE_FLOOR = 1e-3
MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533


def config_key(task_group: str | None, model_size: str | None) -> str:
    return f"{task_group}|{model_size}"


@dataclass
class Transform:
    """Per-feature monotone transform applied before profiling (asinh(x / c) or identity)."""

    log_scale: np.ndarray  # (F,) bool
    magnitude: np.ndarray  # (F,) c, > 0

    @classmethod
    def fit(cls, x: np.ndarray, names: tuple[str, ...]) -> "Transform":
        """``x``: (n, F) raw normal values of signals ``names`` (NaN = missing)."""
        log_scale = np.array([f in LOG_SCALE_FEATURES for f in names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mag = np.nanmedian(np.abs(x), axis=0) if x.size else np.ones(len(names))
        mag = np.where(np.isfinite(mag) & (mag > 1e-8), mag, 1.0)
        return cls(log_scale, mag)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.where(self.log_scale, np.arcsinh(x / self.magnitude), x)

    def invert(self, y: np.ndarray) -> np.ndarray:
        return np.where(self.log_scale, np.sinh(y) * self.magnitude, y)


@dataclass
class StepProfile:
    """Location and scale of every feature at steps 1..S (row s-1 is step s)."""

    center: np.ndarray  # (S, F), NaN where no normal data
    scale: np.ndarray  # (S, F), > 0
    runs: int  # normal runs it was fitted on

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        row = min(max(step, 1), self.center.shape[0]) - 1
        return self.center[row], self.scale[row]


def scale_floor(y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """(F,) minimum scale from pooled transformed normal values ``y`` (n, F) of signals ``names``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(y, axis=0)
        global_scale = MAD_TO_SD * np.nanmedian(np.abs(y - med), axis=0)
    global_scale = np.where(np.isfinite(global_scale), global_scale, 0.0)
    absolute = np.array([RATE_SCALE_FLOOR if f in RATE_FEATURES else ABSOLUTE_SCALE_FLOOR for f in names])
    return np.maximum(RELATIVE_SCALE_FLOOR * global_scale, absolute)


def fit_step_profile(cube: np.ndarray, floor: np.ndarray, window: int = 1) -> StepProfile:
    """Profile from ``cube`` (runs, S, F) of transformed values (NaN = missing or past the run's end)."""
    n_runs, n_steps, n_feat = cube.shape
    center = np.full((n_steps, n_feat), np.nan)
    scale = np.tile(floor, (n_steps, 1)).astype(float)
    for s in range(n_steps):
        lo, hi = max(0, s - window), min(n_steps, s + window + 1)
        pooled = cube[:, lo:hi, :].reshape(-1, n_feat)
        with warnings.catch_warnings():  # all-NaN columns (signal absent at this step) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(pooled, axis=0)
            dev = np.abs(pooled - med)
            # the larger of MAD and mean absolute deviation (both as SD estimates): MAD alone
            # collapses to 0 on discrete signals (fractions of 16 groups) that mostly sit still
            spread = np.fmax(MAD_TO_SD * np.nanmedian(dev, axis=0), MEAN_AD_TO_SD * np.nanmean(dev, axis=0))
        center[s] = med
        scale[s] = np.where(np.isfinite(spread), np.maximum(spread, floor), floor)
    return StepProfile(center, scale, n_runs)
