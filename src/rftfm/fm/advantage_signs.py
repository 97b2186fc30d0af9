"""Advantages whose sign disagrees with their reward's: what tells a flipped advantage from a rescaled one.

A group-relative estimator gives ``a_i = k (r_i - mean(r))`` with ``k > 0`` in every group (TRL's loss types,
``scale_rewards`` group / batch / none, RLOO), so no completion's advantage has the other sign from its reward's
deviation from its group's mean. The advantage invariants (:mod:`rftfm.fm.invariants`) break for any advantage bug;
this share says which kind: a broken normalisation rescales advantages by positive factors (a length bias, a scale)
and flips none, a sign bug flips some. Over the groups the invariants judge, a completion counts where its reward
deviates from the group mean beyond float rounding (:data:`~rftfm.fm.features.SPREAD_TOLERANCE`); the share is
the counted ones whose advantage has the other sign (:func:`rftfm.fm.features.advantage_flips`): 0 in a healthy
run and under any positive rescaling, about the flipped fraction under a sign bug. On h31 (``python
scripts/advantage_signs_runs.py --data /work/data/h31``): 0 at each of the 10,946 records judged before any fault
and at every record of every other fault type while it acts; 0.2 to 1.0 (median 0.52) at every record of the 12
``advantage_sign`` runs from their onset.

The diagnoser reads it, no detector channel does (the residual invariant already alarms on a flip). It is trusted
as the invariants are: once the run's own records held it :data:`~rftfm.fm.invariants.INVARIANT_WARMUP` times, or
from the first record where the caller knows the estimator (the TRL callback, which hands the share over in
``StepRecord.extra`` from the trainer's own batch, :func:`rftfm.integrations.trl_advantages.advantage_invariants`).
Written by hand: one count per record, no library checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from rftfm.fm.features import FLIPPED as SIGNAL
from rftfm.fm.invariants import INVARIANT_LIMITS, INVARIANT_WARMUP
from rftfm.fm.types import SignalEvidence

#: the share above which a record flips signs: the residual invariant's limit (one flipped completion in 256: 4e-3)
LIMIT = INVARIANT_LIMITS["traj_advantage_residual"]
#: records back from the diagnosis step in which a flipped record still counts
RECENT = 3


@dataclass
class SignState:
    """One run's count of records that held the sign (share at or below :data:`LIMIT`), whether the estimator is
    known (armed from the first record), the latest judged record's share and whether it was armed, and the step
    its current stretch of flipping records began (0: none)."""

    known: bool = False
    held: int = 0
    share: float = math.nan
    armed: bool = False
    since: int = 0

    def advance(self, share: float | None, step: int) -> float:
        """Take in one record's share (``None``: no group judged at this record); its units over :data:`LIMIT`
        where the run is armed (else 0)."""
        if share is None or not math.isfinite(share):
            return 0.0
        self.armed = self.known or self.held >= INVARIANT_WARMUP
        self.share = float(share)
        flipped = self.armed and share > LIMIT
        self.since = (self.since or step) if flipped else 0
        self.held += share <= LIMIT
        return share / LIMIT if self.armed else 0.0

    def evidence(self) -> SignalEvidence:
        return SignalEvidence(
            signal=SIGNAL, direction="up", value=self.share, expected=0.0, since_step=self.since or None
        )


def describe(e: SignalEvidence) -> str:
    """``advantage opposite in sign to its reward's deviation for 85 % of completions since step 12 (...)``."""
    since = f" since step {e.since_step}" if e.since_step is not None else ""
    return (
        f"advantage opposite in sign to its reward's deviation for {100 * (e.value or 0.0):.3g} % of completions"
        f"{since} (the advantage code flips signs; a rescaling never does)"
    )


def reading(
    features: pl.DataFrame, run_id: str, step: int, known: bool = False
) -> tuple[bool | None, SignalEvidence | None]:
    """Whether ``run_id``'s records up to ``step`` (``features``: :func:`~rftfm.fm.features.features_frame` rows)
    flip advantage signs: ``(True, evidence)`` where one of its last :data:`RECENT` records did, armed; ``(False,
    None)`` where the last judged one of them held, armed; ``(None, None)`` where none was judged or the run is not
    armed (``known``: the caller knows the estimator, armed from the first record)."""
    if SIGNAL not in features.columns:
        return None, None
    rows = features.filter((pl.col("run_id") == run_id) & pl.col("step").is_between(1, step)).sort("step")
    steps = rows["step"].to_list()
    last = set(sorted(set(steps))[-RECENT:])
    state = SignState(known=known)
    flipped: SignalEvidence | None = None
    held: bool | None = None
    for s, share in zip(steps, rows[SIGNAL].to_list()):
        units = state.advance(share, s)
        if s in last and share is not None and math.isfinite(share) and state.armed:
            held = units <= 1.0
            if not held:
                flipped = state.evidence()
    if flipped is not None:
        return True, flipped
    return (False, None) if held else (None, None)
