"""The KL coefficient a run's loss carries, read off its loss and its KL: the rule of the detector's coefficient
channel.

A GRPO trainer logs ``loss = policy term + beta x KL`` and the KL beside it. At the importance ratio of 1 that an
on-policy step starts from, the policy term is minus the advantages' weighted mean, and group-relative advantages
sum to 0 in every group: 0 exactly for a sequence-level loss, a small length covariance for a token-level one whose
completions differ in length. So where a run's loss is its KL penalty, ``loss / KL`` is the coefficient in use,
record after record (a sequence-level loss's KL, averaged over tokens, moves it a little; how far healthy records
move it, per loss type, ``scripts/kl_coefficient_runs.py`` prints). A coefficient that changes mid-run -- a stale
default or a unit mix-up that keeps the penalty out of the loss while the configured beta is logged, or a beta pushed
far up -- moves that ratio by the factor it changed by, at every record from then on, while the loss itself stays
tiny (a coefficient of 0.03 on a KL of 0.01) and no other logged metric moves at once.

The statistic, over the records with a positive loss and a KL above :data:`KL_FLOOR` that do not clip (the rest
leave the state as it was: a policy term that dominates a loss, or a run without a KL term, has no coefficient to
read, and a record whose clip ratio is above 0 trained at importance ratios other than 1 -- rollouts of a stale
policy, several optimiser steps on one batch -- so its policy term is not 0: such records had moved the ratio of a
stale-rollout fault, which the diagnoser then named a KL push, docs/diagnosis.md): the median of the last
:data:`WINDOW` log-ratios against the median of up to :data:`BASELINE` before them, once there are
:data:`MIN_BASELINE` of those. It is judged only where the reference holds a coefficient (its log-ratios' robust sd
at most :data:`MAX_REFERENCE_SPREAD`) and the window agrees with itself (its log-ratios within
:data:`WINDOW_SPREAD`, or twice the reference's robust sd where that is wider: a coefficient is one number, while a
policy term that takes over the loss for a few records scatters the ratio), and counts in units of :data:`LIMIT` (an
e-fold change) or :data:`SPREAD_UNITS` robust sds of the run's own ratio, whichever is larger. Either direction
counts; a unit above 1 alarms. A loss that is a policy term alone (verl's ``pg_loss``) holds no coefficient and is
not judged: the collapsed verl run of ../shared/real-logs, whose KL sat near 17 under a ``pg_loss`` of quantised
noise, moved its ratio 5.6 log units at step 31 with a reference robust sd of 0.86 (a window spanning 1.1).

The limits were chosen on the development folds' runs (task groups arith_b, repeat, tool and logging every few
steps); ``python scripts/kl_coefficient_runs.py --data DIR [--development]`` prints how far healthy records go (on
/work/data/h31: 125 healthy runs judged, the largest at 0.39 units; docs/detection.md, method 3 (m)).

Written by hand: a two-window statistic of a ratio of two logged metrics; river's drift detectors and ruptures
watch one series against limits of their own, not whether it keeps a ratio to another.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm import on_policy
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.types import SignalEvidence

SIGNALS = ("policy_loss", "kl")  # the ratio's numerator and denominator
LOSS, KL = (CUBE_SIGNALS.index(s) for s in SIGNALS)
CLIP = CUBE_SIGNALS.index(on_policy.SIGNAL)
COLUMNS = (LOSS, KL, CLIP)  # what a record hands :meth:`CoefficientState.advance`
WINDOW = 3  # records whose median log-ratio is "now"
BASELINE = 20  # records before the window whose median is "before"
MIN_BASELINE = 6  # fewer: no reference yet
KL_FLOOR = 1e-6  # a KL below this (a run's first steps, a policy still at its reference) gives no ratio
LIMIT = 1.0  # the least change counted as a unit, in log units: the coefficient moved e-fold
SPREAD_UNITS = 6.0  # ... or this many robust sds of the run's own log-ratio, whichever is larger
WINDOW_SPREAD = 0.1  # a window whose log-ratios span more than this (or twice the reference's sd) is not judged
#: a reference whose log-ratios' robust sd exceeds this has no coefficient to read (a policy term that is not small
#: beside the penalty: verl's ``pg_loss``, a token-level loss of lengths that differ), and is not judged
MAX_REFERENCE_SPREAD = 0.3
_MAD_TO_SD = 1.4826  # a normal distribution's sd per median absolute deviation
UNJUDGED = (math.nan, math.nan, math.nan)


@dataclass
class CoefficientState:
    """One run's last :data:`WINDOW` + :data:`BASELINE` log-ratios of loss to KL."""

    ratios: deque = field(default_factory=lambda: deque(maxlen=WINDOW + BASELINE))

    def copy(self) -> "CoefficientState":
        return CoefficientState(deque(self.ratios, maxlen=WINDOW + BASELINE))

    def advance(self, loss: float, kl: float, clip: float = math.nan) -> tuple[float, float, float]:
        """Take in one record's loss, KL and clip ratio (NaN: not logged); return the signed units (positive: the
        coefficient rose; NaN: not judged; 0: a reference or window without one coefficient), the coefficient now and
        before (the window's and the reference's median ratio, read where the units are finite)."""
        has_ratio = math.isfinite(loss) and math.isfinite(kl) and loss > 0.0 and kl > KL_FLOOR
        if not has_ratio or on_policy.units(clip) > 1.0:
            return UNJUDGED
        self.ratios.append(math.log(loss / kl))
        n = len(self.ratios)
        if n < WINDOW + MIN_BASELINE:
            return UNJUDGED
        ratios = list(self.ratios)  # (Python floats: numpy's per-call set-up costs more than this at every record)
        reference, window = ratios[: n - WINDOW], sorted(ratios[n - WINDOW :])
        before = _median(reference)
        spread = _MAD_TO_SD * _median([abs(r - before) for r in reference])
        now = window[WINDOW // 2]  # (WINDOW is odd)
        if spread > MAX_REFERENCE_SPREAD or window[-1] - window[0] > max(WINDOW_SPREAD, 2.0 * spread):
            return 0.0, math.exp(now), math.exp(before)
        return (now - before) / max(LIMIT, SPREAD_UNITS * spread), math.exp(now), math.exp(before)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    k = len(ordered)
    return ordered[k // 2] if k % 2 else 0.5 * (ordered[k // 2 - 1] + ordered[k // 2])


def cube_units(raw: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R, S) every record's signed units of a raw cube (R, S, len(CUBE_SIGNALS)) in step order (``steps`` 0:
    absent), exactly as :meth:`CoefficientState.advance` gives them."""
    out = np.full(steps.shape, np.nan)
    for r in range(steps.shape[0]):
        state = CoefficientState()
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(*(float(raw[r, s, k]) for k in COLUMNS))[0]
    return out


def reading(raw: np.ndarray, steps: np.ndarray, last: int = BASELINE) -> tuple[float, SignalEvidence | None]:
    """One run's signed units at its ``last`` records (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)): the one of
    largest size (NaN: none judged), and the coefficient's change there as evidence where it passes a unit (else
    None). A moved coefficient becomes the reference a few records later, so the diagnoser reads as far back as the
    reference reaches."""
    state, records = CoefficientState(), []
    present = np.flatnonzero(steps > 0)
    for i, s in enumerate(present):
        values = state.advance(*(float(raw[s, k]) for k in COLUMNS))
        if i >= len(present) - last and math.isfinite(values[0]):
            records.append((values, i))
    if not records:
        return math.nan, None
    values, at = max(records, key=lambda item: abs(item[0][0]))
    if abs(values[0]) <= 1.0:
        return values[0], None
    return values[0], evidence(*values, int(steps[present[max(0, at - WINDOW + 1)]]))  # since the window's first


def evidence(units: float, now: float, before: float, since_step: int | None) -> SignalEvidence:
    """The coefficient's change as evidence on the loss: ``value`` and ``expected`` are the loss per unit of KL now
    and before (``per_kl``)."""
    return SignalEvidence(
        signal="policy_loss",
        direction="up" if units > 0 else "down",
        value=now,
        expected=before,
        z=units,
        ratio=now / before if before > 0.0 else None,
        since_step=since_step,
        per_kl=True,
    )


def describe(e: SignalEvidence) -> str:
    """``loss per unit of KL 0.00034 vs 0.033 before (x0.01) since step 22: the KL coefficient the loss carries fell
    100-fold while the KL goes on being logged``."""
    head = f"loss per unit of KL {e.value:.2g} vs {e.expected:.2g} before"
    if e.ratio is not None:
        head += f" (x{e.ratio:.2g})"
    if e.since_step is not None:
        head += f" since step {e.since_step}"
    factor = e.ratio if e.ratio is not None and e.ratio >= 1.0 else 1.0 / e.ratio if e.ratio else math.nan
    moved = "rose" if e.direction == "up" else "fell"
    return f"{head}: the KL coefficient the loss carries {moved} {factor:.2g}-fold while the KL goes on being logged"
