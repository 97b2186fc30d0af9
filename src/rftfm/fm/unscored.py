"""Completions that no reward function scored: the rule of the detector's unscored-completion channel.

A TRL reward function may return ``None`` for a completion it does not apply to; the trainer sums the functions that
answered (``nansum``). A completion for which *every* function returned ``None`` is unscorable: TRL warns ("All
reward functions returned None ..."), leaves it out of the logged reward statistics and zeroes its advantage, so it
teaches nothing -- and nothing in the step metrics counts it (with one function its mean and sd are those of the
completions it did score). It is what a verifier that times out, crashes on an answer it cannot parse, or gives up
under load and swallows the error leaves behind.

Two places know it where a log of step metrics does not: per-completion records (a trajectory's reward is missing,
not a number, when no function answered) and the trainer itself (the TRL callback reads the latest batch's
per-function rewards, :func:`rftfm.integrations.trl_advantages.unscored_share`, and hands the share over in
``StepRecord.extra``). The rule needs no fitting and no warm-up: a record that lost more than :data:`LIMIT` of its
completions to no score alarms (units: the share over :data:`LIMIT`), with the share as its evidence. A run whose
functions are meant to skip some completions still has every completion scored by one of them; a verifier's
sporadic time-out that costs a batch under a twentieth of its completions is not flagged (the run still learns from
the rest). On h31's 600 runs (``python scripts/unscored_runs.py --data /work/data/h31``) no healthy record has an
unscored completion (normal and control runs', faulty runs' before onset); the 14 ``reward_none`` runs with one
reward function are flagged at their onset's record (the other 4 have a format reward that scores every completion:
the reward identity sees them, :mod:`rftfm.fm.reward_identity`). Written by hand: one number per record, no library
watches for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from rftfm.fm import replay
from rftfm.fm.types import SignalEvidence

#: Feature-dict key / frame column / ``StepRecord.extra`` key: the share of a record's completions that no reward
#: function scored, carried beside the features (like the learning rate): this channel reads it, no model does.
SIGNAL = "unscored_share"
LIMIT = 0.05  # the share of a batch lost to no score that is flagged: above a twentieth
#: records back from the diagnosis step in which an unscored completion still counts
RECENT = 3


def share_of_rewards(rewards: Sequence[float | None]) -> float | None:
    """The share of completions whose reward is missing (``None`` or NaN: no function answered); ``None`` where no
    completion has one (an empty batch, or records that do not carry rewards: nothing to tell a gap from)."""
    missing = sum(1 for r in rewards if r is None or r != r)
    return missing / len(rewards) if missing < len(rewards) else None


def units(share: float | None) -> float:
    """A record's share in units of :data:`LIMIT` (above 1: flagged); 0 where the record does not say."""
    if share is None or not math.isfinite(share) or share <= 0:
        return 0.0
    return share / LIMIT


@dataclass
class UnscoredState:
    """One run's latest known share and the step at which its current stretch of flagged records began (0: none)."""

    share: float = math.nan
    since: int = 0

    def copy(self) -> "UnscoredState":
        return UnscoredState(self.share, self.since)

    def advance(self, share: float | None, step: int) -> float:
        """Take in one record's share (``None``: not known at this record, not judged); its units."""
        value = units(share)
        if share is not None and math.isfinite(share):
            self.share = float(share)
            self.since = (self.since or step) if value > 1.0 else 0
        return value

    def evidence(self) -> SignalEvidence:
        return evidence(self.share, self.since or None)


def evidence(share: float, since_step: int | None) -> SignalEvidence:
    """The share as evidence (``expected`` 0: a healthy batch has every completion scored)."""
    return SignalEvidence(signal=SIGNAL, direction="up", value=share, expected=0.0, since_step=since_step)


def describe(e: SignalEvidence) -> str:
    """``34 % of completions scored by no reward function since step 7 (the verifier gave up on them; TRL zeroes
    their advantage)``."""
    since = f" since step {e.since_step}" if e.since_step is not None else ""
    return (
        f"{100 * (e.value or 0.0):.3g} % of completions scored by no reward function{since} "
        "(the verifier gave up on them; TRL zeroes their advantage)"
    )


def with_records(frame: pl.DataFrame, trajectories: pl.DataFrame | None) -> pl.DataFrame:
    """``frame`` (run_id, step, :data:`SIGNAL`, ...) with :data:`SIGNAL` taken from the trajectories wherever a step
    has them (the share whose reward is missing, as :func:`share_of_rewards`)."""
    if trajectories is None or not trajectories.height or "reward" not in trajectories.columns:
        return frame
    missing = pl.col("reward").cast(pl.Float64).fill_nan(None).is_null()
    shares = (
        trajectories.group_by("run_id", "rollout_step")
        .agg(missing.mean().alias("_share"), missing.all().alias("_none"))
        .select(
            pl.col("run_id"),
            pl.col("rollout_step").alias("step"),
            pl.when(pl.col("_none")).then(None).otherwise(pl.col("_share")).alias("_value"),
        )
    )
    return replay.coalesce_per_step(frame, shares, SIGNAL)


def runs_units(features: pl.DataFrame, run_ids: Sequence[str], n_steps: int) -> np.ndarray:
    """(runs, n_steps) the channel's units of each run's records, exactly as :meth:`UnscoredState.advance` gives them
    live (0 where absent or not known)."""
    return replay.column_units(features, run_ids, n_steps, SIGNAL, UnscoredState)


def run_evidence(features: pl.DataFrame, run_id: str, step: int) -> SignalEvidence | None:
    """The share as evidence where one of ``run_id``'s last :data:`RECENT` records up to ``step`` was flagged
    (``features``: :func:`~rftfm.fm.features.features_frame` rows), else ``None``."""
    return replay.column_evidence(features, run_id, step, SIGNAL, UnscoredState, RECENT)
