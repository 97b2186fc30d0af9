"""When a run's logged learning rate jumps outside any schedule: the rule of the detector's schedule channel.

A learning-rate schedule (constant, linear or cosine warm-up and decay, with any ``logging_steps``) moves the logged
LR smoothly: it rises only while it warms up, and it falls steeply only in the tail of a decay, where the records
before already fell steeply. A configuration pushed mid-run (an LR spike, an LR cut) is a single jump from a flat or
gently moving LR. So a record's log-ratio to the previous record is judged against the previous log-ratio:

* a rise of more than :data:`JUMP` fold after a record in which the LR did not rise (more than :data:`FLAT`);
* a fall of more than :data:`JUMP` fold after a record in which it fell by less than :data:`GENTLE` fold.

On the benchmark's normal and control runs (and the faulty runs before onset) the LR never rose after a record that
did not rise, and fell at most 1.4 fold after a gentle one; mid-run pushes jump 28 to 30 fold up or 10 to 385 fold down
(``python benchmarks/schedule_rule.py``, docs/results/schedule-rule.md). The rule needs two consecutive ratios, so
it judges nothing until the third record with a learning rate (a push at step 1 is not a jump), never judges the
warm-up (every record rises) and is blind to a push inside a steep decay. A rise back to no more than the largest
learning rate the run has logged (:data:`RESTART`) is a restart (cosine with hard restarts), not judged: so a push
that lands at or below the run's own peak is not seen either. A record without a learning rate leaves the state as it
was.

Fitting-free, like the invariant channel (:mod:`rftfm.fm.invariants`): a rule over four numbers, no library does it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rftfm.fm.features import SCHEDULE
from rftfm.fm.types import SignalEvidence

JUMP = 4.0  # fold change of one record that a schedule cannot make from a flat or gentle stretch
FLAT = 1.01  # the previous record "did not rise": it rose by at most this fold
GENTLE = 1.25  # the previous record "fell gently": it fell by at most this fold
RESTART = 1.01  # a rise to at most this fold of the run's largest logged learning rate returns to a rate it had
CAP = 1e6  # units of a jump to or from a learning rate of exactly 0 (finite, so every score stays finite)
_LOG_JUMP, _LOG_FLAT, _LOG_GENTLE = math.log(JUMP), math.log(FLAT), math.log(GENTLE)


def log_ratio(lr: float, previous: float) -> float:
    """log(lr / previous), +-inf to or from 0, NaN when both are 0 (or either is negative or missing)."""
    if not (lr >= 0.0 and previous >= 0.0):
        return math.nan
    if previous == 0.0:
        return math.inf if lr > 0.0 else math.nan
    return -math.inf if lr == 0.0 else math.log(lr / previous)


def jump_units(ratio: float, previous_ratio: float) -> float:
    """A record's jump in units of :data:`JUMP` (above 1: out of any schedule; 0: nothing to judge), signed
    (positive: a rise)."""
    if math.isnan(ratio) or math.isnan(previous_ratio):
        return 0.0
    if ratio > 0 and previous_ratio <= _LOG_FLAT:
        return min(ratio / _LOG_JUMP, CAP)
    if ratio < 0 and previous_ratio >= -_LOG_GENTLE:
        return max(ratio / _LOG_JUMP, -CAP)
    return 0.0


@dataclass
class ScheduleState:
    """One run's learning-rate history as the rule needs it: the last learning rate and the last log-ratio."""

    lr: float = math.nan
    ratio: float = math.nan
    expected: float = 0.0  # log of a change the caller made itself, taken out of the next ratio
    peak: float = math.nan  # the largest learning rate logged so far, times the caller's own changes since

    def copy(self) -> "ScheduleState":
        return ScheduleState(self.lr, self.ratio, self.expected, self.peak)

    def expect(self, factor: float) -> None:
        """The next logged learning rate is ``factor`` times what the schedule alone gives (a change the caller
        made, such as the closed loop's own LR cut): only the rest of the change is judged."""
        if factor > 0 and math.isfinite(factor):
            self.expected += math.log(factor)
            self.peak *= factor  # a restart returns to the peak the caller's change left

    def advance(self, lr: float | None) -> float:
        """Take in one record's learning rate (None / NaN: none logged); its signed jump units."""
        if lr is None or not math.isfinite(lr) or lr < 0:
            return 0.0
        ratio = log_ratio(lr, self.lr) - self.expected if math.isfinite(self.lr) else math.nan
        units = jump_units(ratio, self.ratio)
        if units > 0 and lr <= RESTART * self.peak:  # back to a rate the run already had: a restart, not a push
            units = 0.0
        self.lr, self.ratio, self.expected = lr, ratio, 0.0
        self.peak = lr if math.isnan(self.peak) else max(self.peak, lr)
        return units


def cube_units(lr: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R, S) signed jump units of each run's logged learning rates (R, S) in step order (``steps`` 0: absent),
    exactly as :meth:`ScheduleState.advance` gives them record by record."""
    out = np.zeros(lr.shape)
    for r in range(lr.shape[0]):
        state = ScheduleState()
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(float(lr[r, s]))
    return out


def jump_evidence(lr: float, before: float | None, since_step: int | None) -> SignalEvidence:
    """A jump as evidence: the learning rate now against the one logged before it (at ``since_step``)."""
    return SignalEvidence(signal=SCHEDULE, direction="up" if before is not None and lr > before else "down",
                          value=lr, expected=before, ratio=lr / before if before else None, since_step=since_step)


#: transformers / TRL ``lr_scheduler_type`` values whose learning rate jumps by design (a restart back to the peak,
#: a 10-fold cut on a plateau): with one of them the schedule channel stays silent.
JUMPING_SCHEDULERS = ("cosine_with_restarts", "reduce_lr_on_plateau")


def jumps_by_design(lr_scheduler_type: object) -> bool:
    """Whether a trainer's ``lr_scheduler_type`` (a string or transformers' ``SchedulerType``) jumps by design."""
    return str(getattr(lr_scheduler_type, "value", lr_scheduler_type)) in JUMPING_SCHEDULERS


#: Records back a diagnosis looks for a jump: a push seen this recently is the incident's cause.
RECENT = 20


def recent_jump(lr: np.ndarray, steps: np.ndarray, recent: int = RECENT) -> tuple[float, int | None]:
    """The latest jump (signed units above 1 in size) among one run's last ``recent`` present records (``lr``,
    ``steps`` (S,)), and its index; (0, None) when there is none."""
    units = cube_units(lr[None, :], steps[None, :])[0]
    present = np.flatnonzero(steps > 0)[-recent:]
    jumped = [i for i in present if abs(units[i]) > 1.0]
    return (float(units[jumped[-1]]), int(jumped[-1])) if jumped else (0.0, None)
