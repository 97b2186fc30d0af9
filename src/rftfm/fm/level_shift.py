"""A step metric that moves to a new level and stays there: the rule of the detector's level-shift channel.

A fault switched on mid-run moves what the framework logs to a new level within a record or two and keeps it
there: a noisy verifier lifts the reward sd from 0.4 to 1.1, a broken advantage normalisation multiplies the grad
norm, a sampler gone hot lifts the truncated ratio. A healthy run's metrics drift (a KL that grows, lengths that
change as the policy learns) and jump once (a k3 KL spike), but do not step to a new level in a few records
against their own recent spread. So each record is judged by the mean of a signal's last :data:`WINDOW` values
against the mean of up to :data:`BASELINE` values before them (at least :data:`MIN_BASELINE`), in units of that
reference's own standard deviation (a two-window z), never below the smallest step the signal has taken in this
run (a mean of 32 verifier rewards moves by 1/32 at least) nor, for a magnitude, below :data:`LOG_FLOOR` (5 %).
Magnitudes (the registry's ``log`` scale) are compared as logarithms; fractions and signed levels as they are.
Nothing here depends on a configuration's units.

Each signal and direction gets its own limit, and the channel one threshold over the largest signal's units;
:meth:`rftfm.fm.detect.Detector.fit` calibrates both on healthy records (docs/detection.md, method 3 (g)). A
record without a signal leaves that signal's state as it was.

Written by hand: a two-window statistic over nine signals at once, with each signal's own resolution as a floor,
which must cost microseconds per record; ruptures works offline on a whole series, and river's drift detectors watch
one stream each, against thresholds of their own rather than limits calibrated across configurations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.level_shift_kernel import advance, units_one
from rftfm.fm.rate_shift import SIGNALS as RATE_SIGNALS
from rftfm.fm.types import SignalEvidence
from rftfm.signals import SIGNALS as REGISTRY
from rftfm.signals import depends_on_steps_per_batch

#: The step metrics a framework logs at every record, less the jumpy ones (GRPO's loss, the longest completion),
#: the clip ratio, whose level depends on how many optimiser steps a batch gets, the held-out accuracy (logged every
#: few steps, and only its fall is a symptom) and the tool failure rate: the rate-shift channel's, pooled by calls
#: (:mod:`rftfm.fm.rate_shift`), because a record of a few calls is no rate -- unpooled, a healthy tool run's
#: failure rate moved more than any other signal of any healthy run, and set this channel's threshold.
SIGNALS: tuple[str, ...] = tuple(
    s
    for s in CUBE_SIGNALS
    if s in REGISTRY
    and REGISTRY[s].source == "step"
    and REGISTRY[s].feature
    and not REGISTRY[s].noisy
    and not depends_on_steps_per_batch(s)
    and s not in ("eval_accuracy", *RATE_SIGNALS)
)
COLUMNS = np.array([CUBE_SIGNALS.index(s) for s in SIGNALS])
IS_LOG = np.array([REGISTRY[s].scale == "log" for s in SIGNALS])
WINDOW = 4  # values averaged as "now": a fault persists, a healthy run's odd value does not
BASELINE = 20  # values before the window whose mean and spread are "before"
MIN_BASELINE = 8  # fewer: the spread of a run's first records is no reference
LOG_FLOOR = 0.05  # a magnitude's spread is never taken below a 5 % change
LOG_FLOORS = np.where(IS_LOG, LOG_FLOOR, 1e-12)  # (a fraction or signed level: its own quantum, and never 0)


def transform(values: np.ndarray) -> np.ndarray:
    """The signals' values (..., len(SIGNALS)) on the scale they are compared on: the log of a magnitude (a
    magnitude of 0 or below: NaN, not judged), any other value as it is."""
    x = np.array(values, dtype=float)
    magnitude = IS_LOG & (x > 0)  # (NaN compares False)
    np.log(x, out=x, where=magnitude)
    x[IS_LOG & ~magnitude] = np.nan
    return x


def _unjudged() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = np.full(len(SIGNALS), np.nan)
    out.flags.writeable = False
    return out, out, out


_UNJUDGED = _unjudged()


@dataclass
class LevelState:
    """One run's last :data:`WINDOW` + :data:`BASELINE` values of each signal (right-aligned, NaN before the first),
    how many it has taken in, the smallest step each has made and its latest value."""

    values: np.ndarray = field(default_factory=lambda: np.full((len(SIGNALS), WINDOW + BASELINE), np.nan))
    count: np.ndarray = field(default_factory=lambda: np.zeros(len(SIGNALS), dtype=int))
    quantum: np.ndarray = field(default_factory=lambda: np.full(len(SIGNALS), np.inf))
    last: np.ndarray = field(default_factory=lambda: np.full(len(SIGNALS), np.nan))

    def copy(self) -> "LevelState":
        return LevelState(self.values.copy(), self.count.copy(), self.quantum.copy(), self.last.copy())

    def advance(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take in one record's signals (len(SIGNALS),), in their own units; return each signal's statistic (the
        window's mean minus the reference's, in units of the reference's standard deviation), the window's mean and
        the reference's (both on the compared scale; read only where the statistic is not NaN: where the signal
        is judged at this record)."""
        result = np.empty((3, len(SIGNALS)))
        judged = advance(
            self.values, self.count, self.quantum, self.last, transform(raw), LOG_FLOORS, WINDOW, BASELINE,
            MIN_BASELINE, result,
        )  # compiled: a few dozen numpy calls on one record cost more than their arithmetic
        stat, now, mean = result
        return (stat, now, mean) if judged else _UNJUDGED


def signal_units(stat: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """(..., len(SIGNALS)) each signal's statistic in units of its limit in the direction it moved (``limits``
    (len(SIGNALS), 2): up, down; a limit of inf never fires); NaN where the signal is not judged."""
    return np.where(stat >= 0, stat / limits[:, 0], -stat / limits[:, 1])  # (NaN stays NaN; limits are > 0)


def units(stat: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """(..., ) the largest of :func:`signal_units`; NaN where nothing is judged."""
    if stat.ndim == 1:  # a live record: compiled (numpy's set-up costs more than these few divisions)
        return np.float64(units_one(stat, limits))
    return np.fmax.reduce(signal_units(stat, limits), axis=-1)  # (fmax: NaN only where all are)


def cube_stats(raw: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R, S, len(SIGNALS)) every record's statistics of a raw cube (R, S, len(CUBE_SIGNALS)) in step order
    (``steps`` 0: absent), exactly as :meth:`LevelState.advance` gives them."""
    out = np.full((*steps.shape, len(SIGNALS)), np.nan)
    values = raw[..., COLUMNS]
    for r in range(steps.shape[0]):
        state = LevelState()
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(values[r, s])[0]
    return out


def limits_from(stats: np.ndarray, healthy: np.ndarray, quantile: float) -> np.ndarray:
    """(len(SIGNALS), 2) each signal's limit up and down: the ``quantile`` of the runs' largest move that way over
    their ``healthy`` (R, S) records (inf where no run has one)."""
    out = np.full((len(SIGNALS), 2), np.inf)
    for k in range(len(SIGNALS)):
        for d, sign in enumerate((1.0, -1.0)):
            moved = np.where(healthy, sign * stats[..., k], np.nan)
            has = np.isfinite(moved).any(axis=1)
            if has.any():
                out[k, d] = float(np.quantile(np.nanmax(moved[has], axis=1), quantile))
    return np.where(out > 0, out, np.inf)  # a limit at or below 0 (a signal that never moved that way): none


def evidence(k: int, stat: float, now: float, before: float, since_step: int | None) -> SignalEvidence:
    """Signal ``k``'s window mean against its reference's, in the signal's own units (a magnitude's: geometric)."""
    value, expected = (math.exp(now), math.exp(before)) if IS_LOG[k] else (now, before)
    return SignalEvidence(
        signal=SIGNALS[k],
        direction="up" if stat >= 0 else "down",
        value=value,
        expected=expected,
        z=stat,
        ratio=value / expected if abs(expected) > 1e-12 else None,
        since_step=since_step,
    )
