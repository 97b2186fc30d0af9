"""Per-step feature vectors shared by the detector and the diagnoser.

One step's features are its train-step metrics plus aggregates of that step's
trajectories. :func:`step_features` computes them live from records (constant cost per
step); :func:`features_frame` computes the same columns offline from loaded DataFrames.
Both paths give the same numbers (tested).

Never used as features: the fault-injection label (see ``records.LABEL_FIELDS``), the
learning rate and step time (configuration / hardware echoes, not training dynamics). The
learning rate is carried beside the features (:data:`SCHEDULE`) for the detector's schedule
channel, which judges only its jumps (:mod:`rftfm.fm.schedule`).
Missing signals stay ``None`` / null; consumers decide how to degrade.
"""

from __future__ import annotations

import math
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Sequence

import numpy as np
import polars as pl

from rftfm.fm import repeat_rewards
from rftfm.fm.binary_reward import SPREADS, frame_spreads, spreads_of
from rftfm.fm.reward_identity import PARTS, frame_parts, parts_of
from rftfm.fm.trajectory_kernel import group_consistency, group_residuals, step_numbers
from rftfm.fm.unscored import SIGNAL as UNSCORED
from rftfm.fm.unscored import share_of_rewards, with_records
from rftfm.records import StepRecord, TrajectoryRecord, finite_or_none
from rftfm.signals import names

REPEATS = repeat_rewards.SIGNAL

#: Train-step metrics used as features (the registry's step signals, in the schema's order, less the knob --
#: the learning rate --, wall time and the one-sided clip ratios, which the region ratio covers).
STEP_FEATURES: tuple[str, ...] = names(source="step", feature=True)

#: Aggregates of the step's trajectories used as features.
TRAJECTORY_FEATURES: tuple[str, ...] = names(source="trajectory")

FEATURES: tuple[str, ...] = STEP_FEATURES + TRAJECTORY_FEATURES

#: Trajectory features a trainer can compute itself from its own per-completion log and hand over in
#: ``StepRecord.extra`` when there are no trajectory records (:mod:`rftfm.integrations.trl_advantages`).
INVARIANT_FEATURES: tuple[str, ...] = ("traj_advantage_residual", "traj_advantage_zeroed")

#: Feature-dict key / frame column / ``StepRecord.extra`` key: the share of a record's completions whose advantage has
#: the other sign from their reward's deviation (:mod:`rftfm.fm.advantage_signs`; registered in :mod:`rftfm.signals`),
#: carried beside the features like the learning rate: a diagnosis rule reads it, no model does.
FLIPPED = "advantage_flipped_share"

#: The logged learning rate: carried beside :data:`FEATURES` (in :func:`step_features` and :func:`features_frame`),
#: never one of them.
SCHEDULE = "learning_rate"


#: A live run's history rows as the diagnoser reads them: the features, the learning rate and the reward functions'
#: means and sds (:func:`step_features` gives them all), with their frame types.
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.Utf8(),
    "step": pl.Int64(),
    **{name: pl.Float64() for name in (*FEATURES, SCHEDULE, UNSCORED, REPEATS, FLIPPED)},
    PARTS: pl.List(pl.Float64()),
    SPREADS: pl.List(pl.Float64()),
}


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


#: A group's rewards "spread" when some reward is this far from the group mean (relative to the largest |reward|,
#: at least 1): below it float rounding, not the verifier, separates them. An advantage below ``ADVANTAGE_ZERO`` is 0.
SPREAD_TOLERANCE = 1e-6
ADVANTAGE_ZERO = 1e-8


def _group_index(group: np.ndarray) -> np.ndarray:
    """Each record's group as an index 0..G-1 (some indices may name no record). Small whole-number ids -- the
    usual case -- are offsets from the smallest; anything else goes through ``np.unique`` (about six times
    the cost on one step's records)."""
    low, high = group.min(), group.max()
    if high - low <= 4 * group.size:
        offset = group - low
        index = offset.astype(np.intp)
        if (index == offset).all():
            return index
    return np.unique(group, return_inverse=True)[1]


def advantage_consistency(
    group: np.ndarray, reward: np.ndarray, advantage: np.ndarray
) -> tuple[float | None, float | None]:
    """(residual, zeroed) of one step's trajectories: over the groups whose rewards spread (every member scored),
    the mean share of advantage not explained by the rewards, and the fraction whose advantages are all zero.

    A group-relative estimator gives ``a_i = k (r_i - mean(r))`` with ``k > 0`` in every group (TRL's loss types,
    ``scale_rewards`` group / batch / none, RLOO), so both are 0 in a healthy run of any configuration; a flipped
    sign, a length-dependent rescaling or a group whose advantages were dropped is not. Written by hand: this
    invariant is specific to GRPO-style estimators. ``(None, None)`` where no group spreads.
    """
    keep = np.isfinite(group)
    if not keep.any():
        return None, None
    residual, zeroed, spread, _, _ = _group_numbers(group[keep], reward[keep], advantage[keep])
    if not spread:
        return None, None
    mean = float(np.add.reduce(residual)) / residual.size if residual.size else None
    return mean, zeroed / spread


def advantage_flips(group: np.ndarray, reward: np.ndarray, advantage: np.ndarray) -> float | None:
    """The share of one step's completions whose advantage has the other sign from their reward's deviation from
    the group mean, over the groups :func:`advantage_consistency` judges (:mod:`rftfm.fm.advantage_signs`); ``None``
    where no completion there deviates."""
    keep = np.isfinite(group)
    if not keep.any():
        return None
    flipped, counted = _group_numbers(group[keep], reward[keep], advantage[keep])[3:]
    return flipped / counted if counted else None


def _group_numbers(group: np.ndarray, reward: np.ndarray, advantage: np.ndarray) -> tuple:
    """:func:`~rftfm.fm.trajectory_kernel.group_residuals` of records whose group ids are all finite."""
    index = _group_index(group)
    return group_residuals(
        index, int(index.max()) + 1, np.asarray(reward, dtype=float), np.asarray(advantage, dtype=float),
        SPREAD_TOLERANCE, ADVANTAGE_ZERO,
    )


_NUMERIC = (
    "group_id", "reward", "response_length", "advantage", "repetition_ratio", "unique_token_ratio",
    "tool_call_count", "tool_error_count",
)
_FLAGS = ("empty_response", "short_response", "long_response", "truncated")
_OWN = (*_NUMERIC, "rollout_step")  # a record's own fields an aggregate reads (its flags apart)
_MEANS = [i for i, f in enumerate(_NUMERIC) if f not in ("group_id", "advantage")]  # the columns whose means count
# read from the pydantic models' ``__dict__``: about a third cheaper than attribute access on 128 records
_own_items, _flag_items = itemgetter(*_OWN), itemgetter(*_FLAGS)
_own_attrs, _flag_attrs = attrgetter(*_OWN), attrgetter(*(f"flags.{flag}" for flag in _FLAGS))


def _as_matrix(rows: list[tuple], width: int) -> np.ndarray:
    """(n, width) floats of ``width``-tuples, missing (None) as NaN."""
    try:  # every field set (the usual record): ``fromiter`` converts one flat stream faster than ``array`` rows
        return np.fromiter(chain.from_iterable(rows), float, len(rows) * width).reshape(len(rows), width)
    except (TypeError, ValueError, OverflowError):  # a None, or a stray object
        pass
    try:
        return np.array(rows, dtype=float).reshape(len(rows), width)  # None becomes NaN
    except (TypeError, OverflowError):  # an int too large for a float (or a stray object) counts as missing
        return np.array([[np.nan if (f := finite_or_none(v)) is None else f for v in row] for row in rows])


def _trajectory_columns(trajectories: Sequence[TrajectoryRecord]) -> tuple[np.ndarray, list[float]]:
    """(len(_OWN), n) the trajectories' fields (:data:`_NUMERIC`, then the rollout step), missing as NaN, and the
    share of them that raise each flag of :data:`_FLAGS` (NaN where a flag is missing)."""
    try:
        own = [t.__dict__ for t in trajectories]
        rows, flags = list(map(_own_items, own)), [_flag_items(d["flags"].__dict__) for d in own]
    except (AttributeError, KeyError, TypeError):  # not plain pydantic records (a duck-typed stand-in)
        rows, flags = list(map(_own_attrs, trajectories)), list(map(_flag_attrs, trajectories))
    try:  # booleans (the usual record): Python's sum over each flag, without building a matrix
        rates = [sum(flag) / len(flags) for flag in zip(*flags)]
    except TypeError:  # a flag missing (None) or a stray object: as the numeric fields, missing as NaN
        rates = (np.add.reduce(_as_matrix(flags, len(_FLAGS)), axis=0) / len(flags)).tolist()
    return _as_matrix(rows, len(_OWN)).T, rates


def groups_per_rollout_step(step: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Group keys that differ across rollout steps: a record that pools several steps' trajectories (a trainer
    logging every few steps) holds groups that reuse one another's ids. NaN where the group id is missing."""
    known = np.isfinite(group)
    if not known.any():
        return group
    low = group[known].min()
    return np.where(known, step * (group[known].max() - low + 1) + (group - low), np.nan)


def trajectory_aggregates(trajectories: Sequence[TrajectoryRecord]) -> dict[str, float | None]:
    """Aggregates of one logged step's trajectories (all ``None`` for an empty list)."""
    return _trajectory_numbers(trajectories)[0]


def _trajectory_numbers(trajectories: Sequence[TrajectoryRecord]) -> tuple[dict[str, float | None], float | None]:
    """:func:`trajectory_aggregates` and :func:`advantage_flips` of one logged step's trajectories, in one pass."""
    if not trajectories:
        return dict.fromkeys(TRAJECTORY_FEATURES), None
    own, (empty, short, long, truncated) = _trajectory_columns(trajectories)
    own = np.ascontiguousarray(own)
    stats = np.empty((4, len(_NUMERIC)))
    keyed, residuals, zeroed, spread, flipped, counted = step_numbers(own, stats, SPREAD_TOLERANCE, ADVANTAGE_ZERO)
    if keyed < 0:  # group ids that are not small whole numbers: numpy's general path
        keys = groups_per_rollout_step(own[-1], own[0])
        residual, zeroed_share = advantage_consistency(keys, own[1], own[3])
        flips = advantage_flips(keys, own[1], own[3])
    elif keyed and spread:
        residual = float(np.add.reduce(residuals)) / residuals.size if residuals.size else None
        zeroed_share = zeroed / spread
        flips = flipped / counted if counted else None
    else:
        residual = zeroed_share = flips = None
    # read as Python floats once: indexing numpy scalars one by one costs more than the arithmetic; a column
    # without a finite value has NaN statistics, read as None
    (reward, length, repetition, unique, calls, errors), sd = stats[1, _MEANS].tolist(), stats[2].tolist()
    aggregates = {
        "traj_reward_mean": _num(reward),
        "traj_reward_std": _num(sd[1]),
        "traj_length_mean": _num(length),
        "traj_length_std": _num(sd[2]),
        "traj_advantage_std": _num(sd[3]),
        "traj_advantage_absmax": _num(float(stats[3, 3])),
        "traj_advantage_residual": residual,
        "traj_advantage_zeroed": zeroed_share,
        "traj_repetition_mean": _num(repetition),
        "traj_unique_mean": _num(unique),
        "traj_tool_call_rate": _num(calls),
        "traj_tool_error_rate": _num(errors),
        "traj_empty_rate": empty,
        "traj_short_rate": short,
        "traj_long_rate": long,
        "traj_truncated_rate": truncated,
    }
    return aggregates, flips


def feature_values(features: dict[str, float | None]) -> np.ndarray:
    """(len(FEATURES),) one record's feature dict as floats, missing (or not a number) as NaN, non-finite values kept
    (:func:`rftfm.fm.cube.record_row` reads them as missing)."""
    try:  # plain numbers or None (the usual record): one conversion, not one call per feature
        return np.array([features.get(f) for f in FEATURES], dtype=float)
    except (TypeError, ValueError, OverflowError):
        return np.array([np.nan if (v := finite_or_none(features.get(f))) is None else v for f in FEATURES])


def step_features(step: StepRecord, trajectories: Sequence[TrajectoryRecord]) -> dict[str, float | None]:
    """The feature vector of one step, computed live."""
    features = {name: _num(getattr(step, name)) for name in STEP_FEATURES}
    aggregates, flips = _trajectory_numbers(trajectories)
    features.update(aggregates)
    if not trajectories:  # as the trainer handed them over
        features.update({name: _num(step.extra.get(name)) for name in INVARIANT_FEATURES})
        flips = _num(step.extra.get(FLIPPED))
    features[FLIPPED] = flips
    features[SCHEDULE] = _num(step.learning_rate)
    features[PARTS] = parts_of(step.extra)  # type: ignore[assignment]  # (a tuple: only its channel reads it)
    features[SPREADS] = spreads_of(step.extra)  # type: ignore[assignment]  # (the same)
    features[UNSCORED] = (  # from the completions' own rewards, else as the trainer handed it over
        share_of_rewards([t.reward for t in trajectories]) if trajectories else _num(step.extra.get(UNSCORED))
    )
    features[REPEATS] = (  # the same: the completions' own texts and rewards, else as the trainer handed it over
        _repeats(trajectories) if trajectories else _num(step.extra.get(REPEATS))
    )
    return features


def _repeats(trajectories: Sequence[TrajectoryRecord]) -> float | None:
    """:func:`rftfm.fm.repeat_rewards.disagreements` of one step's records (``None``: none carries its text)."""
    if all(t.completion is None for t in trajectories):
        return None
    return repeat_rewards.disagreements(
        [t.prompt_id for t in trajectories], [t.completion for t in trajectories], [t.reward for t in trajectories]
    )


def _trajectory_frame_aggregates(trajectories: pl.DataFrame) -> pl.DataFrame:
    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64).fill_nan(None)

    def opt(name: str, expr: pl.Expr, alias: str) -> pl.Expr:
        return (expr if name in trajectories.columns else pl.lit(None, dtype=pl.Float64)).alias(alias)

    def rate(name: str, alias: str) -> pl.Expr:
        return opt(name, pl.col(name).cast(pl.Float64).mean(), alias)

    return (
        trajectories.group_by("run_id", "rollout_step")
        .agg(
            opt("reward", col("reward").mean(), "traj_reward_mean"),
            opt("reward", col("reward").std(ddof=0), "traj_reward_std"),
            opt("response_length", col("response_length").mean(), "traj_length_mean"),
            opt("response_length", col("response_length").std(ddof=0), "traj_length_std"),
            opt("advantage", col("advantage").std(ddof=0), "traj_advantage_std"),
            opt("advantage", col("advantage").abs().max(), "traj_advantage_absmax"),
            opt("repetition_ratio", col("repetition_ratio").mean(), "traj_repetition_mean"),
            opt("unique_token_ratio", col("unique_token_ratio").mean(), "traj_unique_mean"),
            opt("tool_call_count", col("tool_call_count").mean(), "traj_tool_call_rate"),
            opt("tool_error_count", col("tool_error_count").mean(), "traj_tool_error_rate"),
            rate("empty_response", "traj_empty_rate"),
            rate("short_response", "traj_short_rate"),
            rate("long_response", "traj_long_rate"),
            rate("truncated", "traj_truncated_rate"),
        )
        .rename({"rollout_step": "step"})
    )


def _advantage_consistency_frame(trajectories: pl.DataFrame) -> pl.DataFrame:
    """:func:`advantage_consistency` of every (run_id, step) of a trajectories frame, with the same rules."""
    keys = ["run_id", "rollout_step", "group_id"]
    r = pl.col("reward").cast(pl.Float64).fill_nan(None)
    a = pl.col("advantage").cast(pl.Float64).fill_nan(None)
    counted = pl.col("d").abs() > SPREAD_TOLERANCE * pl.max_horizontal(pl.lit(1.0), pl.col("r").abs().max().over(keys))
    groups = (
        trajectories.select(*keys, r.alias("r"), a.alias("a"))
        .with_columns((pl.col("r") - pl.col("r").mean().over(keys)).alias("d"))
        .group_by(keys)
        .agg(
            pl.len().alias("n"),
            (pl.col("r").is_not_null() & pl.col("a").is_not_null()).all().alias("complete"),
            (pl.col("a") * pl.col("d")).sum().alias("sad"),
            (pl.col("d") * pl.col("d")).sum().alias("sdd"),
            (pl.col("a") * pl.col("a")).sum().alias("saa"),
            pl.col("d").abs().max().alias("dmax"),
            pl.col("r").abs().max().alias("rmax"),
            pl.col("a").abs().max().alias("amax"),
            counted.sum().alias("counted"),
            (counted & (pl.col("a") * pl.col("d") < 0)).sum().alias("flipped"),
        )
        .filter(
            pl.col("complete")
            & (pl.col("n") >= 2)
            & (pl.col("dmax") > SPREAD_TOLERANCE * pl.max_horizontal(pl.lit(1.0), pl.col("rmax")))
        )
    )
    zeroed = groups["amax"].to_numpy() <= ADVANTAGE_ZERO
    residual = group_consistency(*(groups[c].to_numpy().astype(float) for c in ("sad", "sdd", "saa")))
    return (
        groups.select("run_id", "rollout_step")
        .with_columns(
            pl.Series("residual", np.where(zeroed, np.nan, residual)).fill_nan(None),
            pl.Series("zeroed", zeroed.astype(float)),
            pl.Series("counted", np.where(zeroed, 0, groups["counted"].to_numpy())),
            pl.Series("flipped", np.where(zeroed, 0, groups["flipped"].to_numpy())),
        )
        .group_by("run_id", "rollout_step")
        .agg(
            pl.col("residual").mean().alias("traj_advantage_residual"),
            pl.col("zeroed").mean().alias("traj_advantage_zeroed"),
            pl.when(pl.col("counted").sum() > 0)
            .then(pl.col("flipped").sum() / pl.col("counted").sum())
            .otherwise(None)
            .alias("_flipped"),
        )
        .rename({"rollout_step": "step"})
    )


def handed_over(steps: pl.DataFrame, name: str) -> pl.Expr:
    """The ``name`` column of a steps frame as a trainer handed it over in ``StepRecord.extra`` (``extra.<name>``),
    else null."""
    handed = f"extra.{name}"
    if handed in steps.columns:
        return pl.col(handed).cast(pl.Float64).fill_nan(None).alias(name)
    return pl.lit(None, dtype=pl.Float64).alias(name)


def features_frame(steps: pl.DataFrame, trajectories: pl.DataFrame | None) -> pl.DataFrame:
    """Offline features: one row per (run_id, step) with :data:`FEATURES` columns, :data:`SCHEDULE`, the reward
    functions' means and sds (:data:`~rftfm.fm.reward_identity.PARTS`, :data:`~rftfm.fm.binary_reward.SPREADS`),
    the share of completions no function scored (:data:`~rftfm.fm.unscored.SIGNAL`), the repeated completions scored
    differently (:data:`REPEATS`) and the share whose advantage flipped sign (:data:`FLIPPED`) (nulls where missing).

    Keeps ``fault_active`` when present, as the per-step label for evaluation only.
    """
    keep = ["run_id", "step"] + [c for c in ("fault_active",) if c in steps.columns]
    step_cols = [
        (pl.col(c).cast(pl.Float64).fill_nan(None) if c in steps.columns else pl.lit(None, dtype=pl.Float64)).alias(c)
        for c in (*STEP_FEATURES, SCHEDULE)
    ]
    frame = steps.select(
        *keep, *step_cols, frame_parts(steps), frame_spreads(steps),
        handed_over(steps, UNSCORED), handed_over(steps, REPEATS), handed_over(steps, FLIPPED),
    )
    if trajectories is not None and trajectories.height:
        frame = frame.join(_trajectory_frame_aggregates(trajectories), on=["run_id", "step"], how="left")
        if {"group_id", "reward", "advantage"} <= set(trajectories.columns):
            frame = (
                frame.join(_advantage_consistency_frame(trajectories), on=["run_id", "step"], how="left")
                .with_columns(pl.coalesce("_flipped", FLIPPED).alias(FLIPPED))  # else as a trainer handed it over
                .drop("_flipped")
            )
        else:
            frame = frame.with_columns(
                pl.lit(None, dtype=pl.Float64).alias(c) for c in ("traj_advantage_residual", "traj_advantage_zeroed")
            )
    else:
        frame = frame.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(c) for c in TRAJECTORY_FEATURES])
    frame = repeat_rewards.with_records(with_records(frame, trajectories), trajectories)
    return frame.select(*keep, *FEATURES, SCHEDULE, PARTS, SPREADS, UNSCORED, REPEATS, FLIPPED).sort("run_id", "step")
