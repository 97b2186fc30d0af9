"""Identical completions of one prompt scored differently: the rule of the detector's repeat-reward channel.

A verifier is a function of the prompt and the completion: a math checker, a format check, unit tests run in a
sandbox that answers. Two identical completions of one prompt in one batch then get the same reward, whatever the
configuration, the task or the reward's scale. When they do not, the reward is not a function of the completion: a
noisy or sampled judge, a verifier that gives up on some calls, a tool that fails or returns a wrong result now and
then. Nothing in the step metrics says so (a noisy reward from step 1 is just a reward sd), and a detector that
judges a run against its own history cannot see a fault present from its first step; this rule can, on the first
batch with a repeated completion.

Two places know it: per-completion records (the completion's text, its prompt and its reward) and the trainer itself
(the TRL callback reads the latest batch's prompts, completions and per-function rewards,
:func:`rftfm.integrations.trl_advantages.repeat_disagreements`, and hands the count over in ``StepRecord.extra``). A
record's value is the number of its *repeated sets* (two or more identical completions of one prompt, each scored)
whose rewards differ beyond float rounding; ``None`` where no completion repeats (long completions rarely do: the
rule then judges nothing). More than :data:`LIMIT` such sets over a run's last :data:`RECENT` records alarm (units:
the sets over :data:`LIMIT`): one stray disagreement -- a sandbox time-out once in a while -- is not flagged. A reward
meant to be stochastic or relative to the batch (a judge sampled at a temperature, a rank within the group) breaks
the rule by design: :meth:`rftfm.fm.detect.Detector.know_stochastic_reward` switches it off.

On h31's 600 runs (``python scripts/repeat_rewards_runs.py --data /work/data/h31``) no healthy record has a
disagreeing set (normal and control runs', faulty runs' before onset). Written by hand: a group-by over one batch,
no library checks it.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from rftfm.fm import replay
from rftfm.fm.types import SignalEvidence

#: Feature-dict key / frame column / ``StepRecord.extra`` key: a record's repeated sets scored differently, carried
#: beside the features (like the unscored share): this channel reads it, no model does.
SIGNAL = "repeat_reward_disagreements"
LIMIT = 1.0  # disagreeing sets over the last RECENT records above this alarm: two or more
RECENT = 3  # records pooled
#: two rewards of one completion differ when apart by more than this, absolutely and relative to their size
#: (a verifier's float rounding stays far below it)
TOLERANCE = 1e-6


def _key(value: Any) -> Hashable:
    """A prompt or completion as a dictionary key: text as it is, chat messages (lists of dicts) as sorted JSON."""
    if isinstance(value, (str, int)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _differ(low: float, high: float) -> bool:
    return high - low > TOLERANCE * max(1.0, abs(low), abs(high))


def disagreements(
    prompts: Sequence[Any], completions: Sequence[Any], rewards: Sequence[float | None]
) -> float | None:
    """The number of one batch's repeated sets (two or more identical completions of one prompt with a finite reward)
    whose rewards differ; ``None`` where no completion repeats or the lengths disagree."""
    if not (len(prompts) == len(completions) == len(rewards)):
        return None
    scored: dict[tuple[Hashable, Hashable], list[float]] = {}
    for prompt, completion, reward in zip(prompts, completions, rewards):
        if completion is None or reward is None or not math.isfinite(reward):
            continue  # an unscored completion is the unscored rule's (:mod:`rftfm.fm.unscored`)
        scored.setdefault((_key(prompt), _key(completion)), []).append(float(reward))
    repeated = [r for r in scored.values() if len(r) > 1]
    if not repeated:
        return None
    return float(sum(_differ(min(r), max(r)) for r in repeated))


def units(total: float) -> float:
    """Disagreeing sets over the last records in units of :data:`LIMIT` (above 1: flagged)."""
    return total / LIMIT


@dataclass
class RepeatState:
    """One run's disagreeing sets at its last :data:`RECENT` records (0 where a record had no repeated set) and the
    step at which its current stretch of flagged records began (0: none)."""

    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    since: int = 0

    def copy(self) -> "RepeatState":
        return RepeatState(deque(self.recent, maxlen=RECENT), self.since)

    def advance(self, count: float | None, step: int) -> float:
        """Take in one record's count (``None``: no repeated set, or not known: counts as 0); the units of the last
        records' total."""
        self.recent.append(count if count is not None and math.isfinite(count) and count > 0 else 0.0)
        value = units(sum(self.recent))
        self.since = (self.since or step) if value > 1.0 else 0
        return value

    def evidence(self) -> SignalEvidence:
        return SignalEvidence(
            signal=SIGNAL, direction="up", value=float(sum(self.recent)), expected=0.0, since_step=self.since or None
        )


def describe(e: SignalEvidence) -> str:
    """``identical completions of one prompt scored differently in 5 sets over the last 3 records since step 7
    (...)``."""
    since = f" since step {e.since_step}" if e.since_step is not None else ""
    return (
        f"identical completions of one prompt scored differently in {e.value or 0.0:.0f} sets over the last "
        f"{RECENT} records{since} (the reward is not a function of the completion: a noisy verifier or a flaky tool)"
    )


def with_records(frame: pl.DataFrame, trajectories: pl.DataFrame | None) -> pl.DataFrame:
    """``frame`` (run_id, step, :data:`SIGNAL`, ...) with :data:`SIGNAL` counted from the trajectories wherever a step
    has a repeated set (as :func:`disagreements`), else as it was (a trainer's hand-over, or null)."""
    needed = {"run_id", "rollout_step", "prompt_id", "completion", "reward"}
    if trajectories is None or not trajectories.height or not needed <= set(trajectories.columns):
        return frame
    reward = pl.col("reward").cast(pl.Float64)
    low, high = pl.col("_low"), pl.col("_high")
    scale = pl.max_horizontal(pl.lit(1.0), low.abs(), high.abs())
    sets = (
        trajectories.filter(pl.col("completion").is_not_null() & reward.is_finite())
        .group_by("run_id", "rollout_step", "prompt_id", "completion")
        .agg(pl.len().alias("_n"), reward.min().alias("_low"), reward.max().alias("_high"))
        .filter(pl.col("_n") > 1)
        .group_by("run_id", "rollout_step")
        .agg(((high - low) > TOLERANCE * scale).sum().cast(pl.Float64).alias("_value"))
        .select("run_id", pl.col("rollout_step").alias("step"), "_value")
    )
    return replay.coalesce_per_step(frame, sets, SIGNAL)


def runs_units(features: pl.DataFrame, run_ids: Sequence[str], n_steps: int) -> np.ndarray:
    """(runs, n_steps) the channel's units of each run's records, exactly as :meth:`RepeatState.advance` gives them
    live (0 where absent or not known)."""
    return replay.column_units(features, run_ids, n_steps, SIGNAL, RepeatState)


def run_evidence(features: pl.DataFrame, run_id: str, step: int) -> SignalEvidence | None:
    """The count as evidence where one of ``run_id``'s last :data:`RECENT` records up to ``step`` was flagged
    (``features``: :func:`~rftfm.fm.features.features_frame` rows), else ``None``."""
    return replay.column_evidence(features, run_id, step, SIGNAL, RepeatState, RECENT)
