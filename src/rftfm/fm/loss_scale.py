"""The loss leaving the scale a healthy policy term keeps: the rule of the detector's loss-scale channel.

At the importance ratio of 1 that every on-policy GRPO step starts from, the policy term of the logged loss is minus
the advantages' weighted mean. Group-relative advantages sum to 0 in every group, so a healthy loss carries only what
the weighting leaves (the length covariance of a token-level loss, the ratios of later optimiser steps on one batch):
small, at a scale of its own that changes slowly. Advantages that stop summing to 0 -- a sign flipped on some
trajectories, a normalisation that no longer centres them -- or a penalty pushed into the loss lift the loss's
magnitude at every record, whichever its sign. The statistic: the log of the median magnitude of the last
:data:`WINDOW` losses over the largest magnitude of up to :data:`BASELINE` before them (never below :data:`FLOOR`: a
loss of exactly 0 -- every group's rewards equal -- is no scale); only a rise counts. The largest, not a root mean
square: a token-level loss's healthy magnitude is a ratio of random sums, heavy-tailed, and reaches well past its
RMS by itself (BNPO runs of never-seen configurations, 15-183 records in, moved 2.5-3.4x their RMS for a record or
two; none went past twice the largest of the 20 before), while a broken advantage sum lifts every record past
anything the healthy loss reached. The step-metrics analogue of the advantage-sum invariant the trajectory records
give (:mod:`rftfm.fm.invariants`).

The premise is a ratio of 1: from the first record that clips (a clip ratio above 0, :mod:`rftfm.fm.on_policy`) the
run's optimiser takes several steps on one batch -- verl's PPO mini-batches, ``num_iterations > 1`` -- and its loss
carries the ratios' own spread, heavier-tailed than any advantage mean (the healthy verl log of ../shared/real-logs
moves its loss's scale 2.5-fold); the channel judges no later record of that run. A record whose groups all had equal
rewards (``frac_reward_zero_std`` of 1) has no policy term: its loss is the
penalties' alone, and a sparse-reward run's first rewarded groups would otherwise look like a jump from a loss of 0;
such a record, and one without a finite loss, leaves the state as it was. Judged once the run has :data:`MIN_BASELINE`
records of reference.

Written by hand: a two-window ratio of one logged metric's magnitudes, a few microseconds per record; river's drift
detectors and ruptures track a series' mean against thresholds of their own, not a magnitude against its own earlier
scale with limits calibrated across configurations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm import loss_penalty, on_policy
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.types import SignalEvidence

LOSS = CUBE_SIGNALS.index("policy_loss")
ZERO_STD = CUBE_SIGNALS.index("frac_zero_std_groups")
CLIP = CUBE_SIGNALS.index(on_policy.SIGNAL)
WINDOW = 4  # records whose median magnitude is "now": a broken advantage sum moves the loss at every record
BASELINE = 20  # records before the window whose largest magnitude is "before"
MIN_BASELINE = 8  # fewer: no reference yet
FLOOR = 0.01  # a reference scale is never taken below this (advantages are O(1); a loss of 1e-9 is a loss of 0)
#: the channel's threshold is never below this: the window's median magnitude twice the reference's scale -- a bar the
#: calibration on healthy runs may raise
MIN_THRESHOLD = math.log(2.0)
TINY = 1e-12  # a window of losses of exactly 0: the statistic stays finite (far below any threshold)
UNJUDGED = (math.nan, math.nan, math.nan)


@dataclass
class ScaleState:
    """One run's last :data:`WINDOW` + :data:`BASELINE` losses, and whether it has clipped."""

    losses: deque = field(default_factory=lambda: deque(maxlen=WINDOW + BASELINE))
    clipped: bool = False

    def copy(self) -> "ScaleState":
        return ScaleState(deque(self.losses, maxlen=WINDOW + BASELINE), self.clipped)

    def advance(self, loss: float, zero_std: float = math.nan, clip: float = math.nan) -> tuple[float, float, float]:
        """Take in one record's loss, share of groups with equal rewards and clip ratio (NaN: not logged); return the
        statistic (NaN: not judged), the window's median magnitude and the reference's largest magnitude (read where
        the statistic is finite)."""
        self.clipped = self.clipped or on_policy.units(clip) > 1.0
        if self.clipped or not math.isfinite(loss) or zero_std >= 1.0:
            return UNJUDGED
        self.losses.append(loss)
        n = len(self.losses)
        if n < WINDOW + MIN_BASELINE:
            return UNJUDGED
        losses = list(self.losses)
        reference, window = losses[: n - WINDOW], sorted(abs(v) for v in losses[n - WINDOW :])
        now = 0.5 * (window[WINDOW // 2 - 1] + window[WINDOW // 2])  # (WINDOW is even)
        before = max(abs(v) for v in reference)
        return math.log(max(now, TINY) / max(before, FLOOR)), now, before


def cube_stats(raw: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R, S) every record's statistic of a raw cube (R, S, len(CUBE_SIGNALS)) in step order (``steps`` 0: absent),
    exactly as :meth:`ScaleState.advance` gives it."""
    out = np.full(steps.shape, np.nan)
    for r in range(steps.shape[0]):
        state = ScaleState()
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(*(float(raw[r, s, k]) for k in (LOSS, ZERO_STD, CLIP)))[0]
    return out


def reading(raw: np.ndarray, steps: np.ndarray) -> tuple[float, SignalEvidence | None]:
    """One run's largest statistic over its last :data:`WINDOW` records (``raw`` (S, len(CUBE_SIGNALS)), ``steps``
    (S,); NaN: none judged) and the loss's magnitude at that record as evidence (None where none was judged)."""
    state, records = ScaleState(), []
    for s in np.flatnonzero(steps > 0):
        records.append((state.advance(*(float(raw[s, k]) for k in (LOSS, ZERO_STD, CLIP))), s))
    last = [(values, s) for values, s in records[-WINDOW:] if math.isfinite(values[0])]
    if not last:
        return math.nan, None
    values, at = max(last, key=lambda item: item[0][0])
    present = np.flatnonzero(steps[: at + 1] > 0)
    since = int(steps[present[max(0, len(present) - WINDOW)]])  # the window's first record
    return values[0], evidence(*values, since)


def evidence(stat: float, now: float, before: float, since_step: int | None) -> SignalEvidence:
    """The loss's magnitude as evidence: its median over the window against the largest before (the same fields as the
    loss penalty's, :func:`rftfm.fm.loss_penalty.evidence`)."""
    return loss_penalty.evidence(stat, now, before, since_step)
