"""Per-step feature vectors shared by the detector and the diagnoser.

One step's features are its train-step metrics plus aggregates of that step's
trajectories. :func:`step_features` computes them live from records (constant cost per
step); :func:`features_frame` computes the same columns offline from loaded DataFrames.
Both paths give the same numbers (tested).

Never used as features: the fault-injection label (see ``records.LABEL_FIELDS``), the
learning rate and step time (configuration / hardware echoes, not training dynamics).
Missing signals stay ``None`` / null; consumers decide how to degrade.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import polars as pl

from rftfm.records import StepRecord, TrajectoryRecord, finite_or_none
from rftfm.signals import names

#: Train-step metrics used as features (the registry's step signals, in the schema's order, less the knob --
#: the learning rate --, wall time and the one-sided clip ratios, which the region ratio covers).
STEP_FEATURES: tuple[str, ...] = names(source="step", feature=True)

#: Aggregates of the step's trajectories used as features.
TRAJECTORY_FEATURES: tuple[str, ...] = names(source="trajectory")

FEATURES: tuple[str, ...] = STEP_FEATURES + TRAJECTORY_FEATURES


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def trajectory_aggregates(trajectories: Sequence[TrajectoryRecord]) -> dict[str, float | None]:
    """Aggregates of one step's trajectories (all ``None`` for an empty list)."""
    if not trajectories:
        return dict.fromkeys(TRAJECTORY_FEATURES)

    def arr(name: str) -> np.ndarray:
        values = [getattr(t, name) for t in trajectories]
        try:
            return np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        except OverflowError:  # an int too large for a float counts as missing
            return np.array([np.nan if (f := finite_or_none(v)) is None else f for v in values], dtype=float)

    reward, length, adv = arr("reward"), arr("response_length"), arr("advantage")
    flags = [t.flags for t in trajectories]

    def nan_stat(fn, x: np.ndarray) -> float | None:
        x = x[np.isfinite(x)]
        return _num(fn(x)) if x.size else None

    return {
        "traj_reward_mean": nan_stat(np.mean, reward),
        "traj_reward_std": nan_stat(np.std, reward),
        "traj_length_mean": nan_stat(np.mean, length),
        "traj_length_std": nan_stat(np.std, length),
        "traj_advantage_std": nan_stat(np.std, adv),
        "traj_advantage_absmax": nan_stat(lambda x: np.max(np.abs(x)), adv),
        "traj_repetition_mean": nan_stat(np.mean, arr("repetition_ratio")),
        "traj_unique_mean": nan_stat(np.mean, arr("unique_token_ratio")),
        "traj_tool_call_rate": nan_stat(np.mean, arr("tool_call_count")),
        "traj_tool_error_rate": nan_stat(np.mean, arr("tool_error_count")),
        "traj_empty_rate": float(np.mean([f.empty_response for f in flags])),
        "traj_short_rate": float(np.mean([f.short_response for f in flags])),
        "traj_long_rate": float(np.mean([f.long_response for f in flags])),
        "traj_truncated_rate": float(np.mean([f.truncated for f in flags])),
    }


def step_features(step: StepRecord, trajectories: Sequence[TrajectoryRecord]) -> dict[str, float | None]:
    """The feature vector of one step, computed live."""
    features = {name: _num(getattr(step, name)) for name in STEP_FEATURES}
    features.update(trajectory_aggregates(trajectories))
    return features


def _trajectory_frame_aggregates(trajectories: pl.DataFrame) -> pl.DataFrame:
    def col(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.Float64).fill_nan(None)

    def opt(name: str, expr: pl.Expr, alias: str) -> pl.Expr:
        return (expr if name in trajectories.columns else pl.lit(None, dtype=pl.Float64)).alias(alias)

    def rate(name: str, alias: str) -> pl.Expr:
        return opt(name, pl.col(name).cast(pl.Float64).mean(), alias)

    return trajectories.group_by("run_id", "rollout_step").agg(
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
    ).rename({"rollout_step": "step"})


def features_frame(steps: pl.DataFrame, trajectories: pl.DataFrame | None) -> pl.DataFrame:
    """Offline features: one row per (run_id, step) with :data:`FEATURES` columns (nulls where missing).

    Keeps ``fault_active`` when present, as the per-step label for evaluation only.
    """
    keep = ["run_id", "step"] + [c for c in ("fault_active",) if c in steps.columns]
    step_cols = [
        (pl.col(c).cast(pl.Float64).fill_nan(None) if c in steps.columns else pl.lit(None, dtype=pl.Float64)).alias(c)
        for c in STEP_FEATURES
    ]
    frame = steps.select(*keep, *step_cols)
    if trajectories is not None and trajectories.height:
        frame = frame.join(_trajectory_frame_aggregates(trajectories), on=["run_id", "step"], how="left")
    else:
        frame = frame.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(c) for c in TRAJECTORY_FEATURES])
    return frame.select(*keep, *FEATURES).sort("run_id", "step")
