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

Inside the trainer the coefficient it is configured with is known (:class:`Configured`, read off its knobs by the
loop): there the window is also judged against it, from the first window on, where a change needs a reference (a
coefficient kept out of the loss from the first step shows no change). Only "less than configured" counts
(:data:`CONFIGURED_LIMIT`, :data:`CONFIGURED_SPREAD`): a policy term adds to a loss as often as it takes away, and
healthy runs whose policy term outweighs the penalty sit far above the configured coefficient. The window is read
off consecutive records: a record whose loss is at or below 0 beside a KL above the floor (a policy term that
outweighed the penalty there) starts it again. Its policy term is there at the records around it too, and can hold
those whose loss stayed positive below the configured coefficient: a healthy DAPO run of /work/data/h31 (a token-level
loss of completions that differ in length; a negative loss at most of its records) sat 1.57 e-folds below at its step
198 over three positive records among negative ones, where kl_dropped runs read the coefficient they carry over
unbroken windows.

Written by hand: a two-window statistic of a ratio of two logged metrics; river's drift detectors and ruptures
watch one series against limits of their own, not whether it keeps a ratio to another.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm import on_policy
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.types import SignalEvidence

SIGNALS = ("policy_loss", "kl")  # the ratio's numerator and denominator
LOSS, KL = (CUBE_SIGNALS.index(s) for s in SIGNALS)
CLIP = CUBE_SIGNALS.index(on_policy.SIGNAL)
LENGTH = CUBE_SIGNALS.index("completion_length_mean")
COLUMNS = (LOSS, KL, CLIP, LENGTH)  # what a record hands :meth:`CoefficientState.advance`
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
UNJUDGED = (math.nan, math.nan, math.nan, False)
#: Inside the trainer (:class:`Configured`): the window's median log-ratio to the configured coefficient counts in
#: units of this many e-folds below it (above 1 unit: the loss carries less than 1 / e of it) ...
CONFIGURED_LIMIT = 1.0
#: ... where the window's log-ratios span at most this (a coefficient is one number; a policy term comparable to the
#: penalty scatters them). Chosen on the development folds' runs of /work/data/h31, where ``kl_dropped`` windows sit 1.6
#: (beta x 0.2) and 4.6 (beta x 0.01) e-folds below; ``python scripts/kl_coefficient_runs.py --data DIR --configured``
#: prints the rule's largest units on healthy records (with the change rule's: 0.76 on h31's 600 runs and on hw42's
#: 886) and the faulty runs it alarms.
CONFIGURED_SPREAD = 0.5


@dataclass(frozen=True)
class Configured:
    """The KL coefficient a trainer says its loss carries: ``beta``, times the mean completion length over
    ``max_completion_length`` where the loss is normalised by the longest completion allowed (TRL's ``dr_grpo``:
    the KL term is summed over tokens and divided by batch x that length)."""

    beta: float
    max_completion_length: float | None = None

    def expected(self, length: float) -> float | None:
        """The coefficient at a record whose mean completion length is ``length`` (None: not known there)."""
        if self.max_completion_length is None:
            return self.beta
        if not (math.isfinite(length) and length > 0 and self.max_completion_length > 0):
            return None
        return self.beta * length / self.max_completion_length

    @classmethod
    def of(cls, beta: object, loss_type: object = None, max_completion_length: object = None) -> "Configured | None":
        """The coefficient of a GRPO configuration (``None``: no KL term, or a length-normalised loss without its
        length limit)."""
        if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            return None
        if loss_type == "dr_grpo":
            longest = max_completion_length
            return cls(float(beta), float(longest)) if isinstance(longest, (int, float)) and longest > 0 else None
        return cls(float(beta))

    @classmethod
    def of_config(cls, config: Mapping[str, object]) -> "Configured | None":
        """:meth:`of` a configuration's ``beta``, ``loss_type`` and ``max_completion_length`` (a trainer's knobs, a
        run's ``run_info``)."""
        return cls.of(config.get("beta"), config.get("loss_type"), config.get("max_completion_length"))

    @classmethod
    def of_trainer(cls, trainer: object) -> "Configured | None":
        """A TRL GRPOTrainer's configured coefficient (``None``: no KL term, or not a trainer that says)."""
        return cls.of(getattr(trainer, "beta", None), getattr(trainer, "loss_type", None),
                      getattr(trainer, "max_completion_length", None))


@dataclass
class CoefficientState:
    """One run's last :data:`WINDOW` + :data:`BASELINE` log-ratios of loss to KL."""

    ratios: deque = field(default_factory=lambda: deque(maxlen=WINDOW + BASELINE))
    configured: Configured | None = None  # what the trainer says the coefficient is (inside it), else None
    below: deque = field(default_factory=lambda: deque(maxlen=WINDOW))  # log-ratios to it, the last WINDOW records

    def copy(self) -> "CoefficientState":
        return CoefficientState(deque(self.ratios, maxlen=WINDOW + BASELINE), self.configured,
                                deque(self.below, maxlen=WINDOW))

    def know(self, configured: Configured | None) -> None:
        """The coefficient the trainer is configured with from the next record on (a changed one starts a new
        window: the records before were judged against the old one)."""
        if configured != self.configured:
            self.configured = configured
            self.below.clear()

    def advance(
        self, loss: float, kl: float, clip: float = math.nan, length: float = math.nan
    ) -> tuple[float, float, float, bool]:
        """Take in one record's loss, KL, clip ratio and mean completion length (NaN: not logged); return the signed
        units (positive: the coefficient rose; NaN: not judged; 0: a reference or window without one coefficient),
        the coefficient now and before (the window's and the reference's median ratio, read where the units are
        finite) and whether "before" is the :class:`Configured` coefficient (:meth:`_below_configured`: where its
        units are the larger)."""
        readable = math.isfinite(loss) and math.isfinite(kl) and kl > KL_FLOOR and on_policy.units(clip) <= 1.0
        if not readable or loss <= 0.0:
            if readable:  # a loss at or below 0 beside a KL: a policy term outweighed the penalty at this record
                self.below.clear()
            return UNJUDGED
        self.ratios.append(math.log(loss / kl))
        configured = self._below_configured(length)
        n = len(self.ratios)
        if n < WINDOW + MIN_BASELINE:
            return configured
        ratios = list(self.ratios)  # (Python floats: numpy's per-call set-up costs more than this at every record)
        reference, window = ratios[: n - WINDOW], sorted(ratios[n - WINDOW :])
        before = _median(reference)
        spread = _MAD_TO_SD * _median([abs(r - before) for r in reference])
        now = window[WINDOW // 2]  # (WINDOW is odd)
        if spread > MAX_REFERENCE_SPREAD or window[-1] - window[0] > max(WINDOW_SPREAD, 2.0 * spread):
            changed = (0.0, math.exp(now), math.exp(before), False)
        else:
            changed = ((now - before) / max(LIMIT, SPREAD_UNITS * spread), math.exp(now), math.exp(before), False)
        return configured if abs(configured[0]) > abs(changed[0]) else changed

    def _below_configured(self, length: float) -> tuple[float, float, float, bool]:
        """The newest ratio against the configured coefficient: over the last :data:`WINDOW` records that agree with
        one another (within :data:`CONFIGURED_SPREAD`), their median log-ratio to it below 0, in units of
        :data:`CONFIGURED_LIMIT` (negative: the loss carries less than the trainer says), with the coefficient now
        and the configured one; NaN units where not judged (nothing configured, a window not filled or scattered),
        0 where the window sits at or above it (a policy term adds to the loss: no evidence either way)."""
        expected = self.configured.expected(length) if self.configured is not None else None
        if expected is None:
            self.below.clear()  # a record without the configured coefficient breaks the window
            return UNJUDGED
        self.below.append(self.ratios[-1] - math.log(expected))
        window = sorted(self.below)
        if len(window) < WINDOW or window[-1] - window[0] > CONFIGURED_SPREAD:
            return UNJUDGED
        now = window[WINDOW // 2]
        return min(now, 0.0) / CONFIGURED_LIMIT, math.exp(now) * expected, expected, True


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    k = len(ordered)
    return ordered[k // 2] if k % 2 else 0.5 * (ordered[k // 2 - 1] + ordered[k // 2])


def cube_units(raw: np.ndarray, steps: np.ndarray, configured: Sequence[Configured | None] | None = None) -> np.ndarray:
    """(R, S) every record's signed units of a raw cube (R, S, len(CUBE_SIGNALS)) in step order (``steps`` 0:
    absent), exactly as :meth:`CoefficientState.advance` gives them (``configured``: each run's, as the trainer said
    it; default none)."""
    out = np.full(steps.shape, np.nan)
    for r in range(steps.shape[0]):
        state = CoefficientState(configured=configured[r] if configured is not None else None)
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(*(float(raw[r, s, k]) for k in COLUMNS))[0]
    return out


def reading(
    raw: np.ndarray, steps: np.ndarray, last: int = BASELINE, configured: Configured | None = None
) -> tuple[float, SignalEvidence | None]:
    """One run's signed units at its ``last`` records (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)): the one of
    largest size (NaN: none judged), and the coefficient's change there as evidence where it passes a unit (else
    None). A moved coefficient becomes the reference a few records later, so the diagnoser reads as far back as the
    reference reaches. ``configured``: the coefficient the trainer says it uses (:class:`Configured`)."""
    state, records = CoefficientState(configured=configured), []
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


def evidence(
    units: float, now: float, before: float, configured: bool = False, since_step: int | None = None
) -> SignalEvidence:
    """The coefficient's change as evidence on the loss: ``value`` and ``expected`` are the loss per unit of KL now
    and before (``per_kl``), or the coefficient the trainer is configured with (``configured``)."""
    return SignalEvidence(
        signal="policy_loss",
        direction="up" if units > 0 else "down",
        value=now,
        expected=before,
        z=units,
        ratio=now / before if before > 0.0 else None,
        since_step=since_step,
        per_kl=True,
        configured=configured,
    )


def describe(e: SignalEvidence) -> str:
    """``loss per unit of KL 0.00034 vs 0.033 before (x0.01) since step 22: the KL coefficient the loss carries fell
    100-fold while the KL goes on being logged``; against the configured one: ``loss per unit of KL 0.00034 vs beta
    0.034 configured (x0.01) since step 1: the loss carries 100-fold less KL penalty than the trainer is configured
    with``."""
    head = f"loss per unit of KL {e.value:.2g} vs {e.expected:.2g} " + ("configured" if e.configured else "before")
    if e.ratio is not None:
        head += f" (x{e.ratio:.2g})"
    if e.since_step is not None:
        head += f" since step {e.since_step}"
    factor = e.ratio if e.ratio is not None and e.ratio >= 1.0 else 1.0 / e.ratio if e.ratio else math.nan
    if e.configured:
        return f"{head}: the loss carries {factor:.2g}-fold less KL penalty than the trainer is configured with"
    moved = "rose" if e.direction == "up" else "fell"
    return f"{head}: the KL coefficient the loss carries {moved} {factor:.2g}-fold while the KL goes on being logged"
