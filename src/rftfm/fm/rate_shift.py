"""A failure rate that steps up and stays up: the rule of the detector's rate-shift channel.

A tool sandbox that starts failing (time-outs, crashes) raises the share of tool calls that fail -- TRL's
``tools/failure_frequency`` -- from one record to the next and keeps it there. A healthy run's failure rate has a
level its task and its policy set (a model still learning the call format fails many calls) and moves as the policy
learns, but it does not step up and hold. So each record is judged by the failure rate pooled over its last
:data:`WINDOW` records minus the rate pooled over up to :data:`BASELINE` records before them (at least
:data:`MIN_BASELINE`): a change in the fraction's own units, which mean the same in every configuration. Pooled:
each record weighs by its calls per completion (``tools/call_frequency``; the batch is the same size all run), so
a record with two calls, one of which failed, does not count as a 50 % failure rate. The threshold that change must
pass is calibrated by :meth:`rftfm.fm.detect.Detector.fit` on healthy records (see docs/detection.md). A record
without the rate leaves the state as it was (without its weight, it weighs 1); a run that never logs it (no tools)
is never judged.

Written by hand: a pooled difference of a few numbers in a window; river's drift detectors watch one unweighted
stream against a threshold of their own.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.types import SignalEvidence

#: Fractions that only a fault raises by a step, each with the signal that weighs its records (one so far).
SIGNALS: tuple[str, ...] = ("tool_failure_frequency",)
WEIGHTS: tuple[str, ...] = ("tool_call_frequency",)
COLUMNS = np.array([CUBE_SIGNALS.index(s) for s in SIGNALS])
WEIGHT_COLUMNS = np.array([CUBE_SIGNALS.index(s) for s in WEIGHTS])
WINDOW = 4  # records pooled as "now": a sandbox failure persists, a healthy record's odd value does not
BASELINE = 20  # records before the window pooled as "before"
MIN_BASELINE = 3


def _read_only_nan() -> np.ndarray:
    out = np.full(len(SIGNALS), np.nan)
    out.flags.writeable = False
    return out


_UNJUDGED = (_read_only_nan(), _read_only_nan())  # (now, before) of every record of a run without tools


@dataclass
class ShiftState:
    """One run's last :data:`WINDOW` + :data:`BASELINE` (rate, weight) pairs of each signal."""

    history: list[deque] = field(default_factory=lambda: [deque(maxlen=WINDOW + BASELINE) for _ in SIGNALS])

    def copy(self) -> "ShiftState":
        return ShiftState([deque(h, maxlen=h.maxlen) for h in self.history])

    def advance(self, rates: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take in one record's rates and weights (K,); each rate pooled over the window and over the baseline
        (NaN while it has too few records, or where this record does not carry it). Their difference is the shift."""
        if not np.isfinite(rates).any():  # a run without tools: every record, so it costs nothing
            return _UNJUDGED
        now, before = np.full(len(SIGNALS), np.nan), np.full(len(SIGNALS), np.nan)
        for k, rate in enumerate(rates):
            if not math.isfinite(rate):
                continue
            weight = weights[k] if math.isfinite(weights[k]) and weights[k] >= 0 else 1.0
            history = self.history[k]
            history.append((float(rate), float(weight)))
            if len(history) >= WINDOW + MIN_BASELINE:
                pairs = np.array(history)
                now[k], before[k] = _pooled(pairs[-WINDOW:]), _pooled(pairs[:-WINDOW])
        return now, before


def _pooled(pairs: np.ndarray) -> float:
    """Rate pooled over (rate, weight) records: their weighted mean (the plain mean when nothing weighs)."""
    total = pairs[:, 1].sum()
    return float((pairs[:, 0] * pairs[:, 1]).sum() / total) if total > 0 else float(pairs[:, 0].mean())


def evidence(k: int, now: float, before: float, since_step: int | None) -> SignalEvidence:
    """Signal ``k``'s pooled rate in the window against the one before it, as evidence of a shift up."""
    return SignalEvidence(signal=SIGNALS[k], direction="up", value=now, expected=before,
                          ratio=now / before if before else None, since_step=since_step)


def cube_shifts(raw: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R, S) the largest signal's shift at each record of a raw cube (R, S, len(CUBE_SIGNALS)) in step order
    (``steps`` 0: absent; NaN where nothing is judged), exactly as :meth:`ShiftState.advance` gives them."""
    out = np.full(steps.shape, np.nan)
    rates, weights = raw[..., COLUMNS], raw[..., WEIGHT_COLUMNS]
    for r in np.flatnonzero(np.isfinite(rates).any(axis=(1, 2))):  # the runs that log a rate at all
        state = ShiftState()
        for s in np.flatnonzero(steps[r] > 0):
            now, before = state.advance(rates[r, s], weights[r, s])
            if np.isfinite(now).any():
                out[r, s] = np.nanmax(now - before)
    return out
