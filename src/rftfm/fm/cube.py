"""Raw signals of runs as arrays: the step-indexed cube every detector and baseline scores.

A cube is (runs, S, signals) with S the largest step number, NaN where a run logged nothing
(a step it skipped with ``logging_steps > 1``, or past its end), and a (runs, S) array of step
numbers with 0 for absent steps. Its signals (:data:`CUBE_SIGNALS`) are the shared features
(:mod:`rftfm.fm.features`) plus three derived from them (:data:`DERIVED`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from rftfm.fm.features import FEATURES, SCHEDULE, feature_values
from rftfm.fm.live_kernels import cube_row, flat_advance


@dataclass
class FlatStreak:
    """Steps in a row whose eval accuracy equals the previous step's, per run (the stall signal).

    Greedy eval accuracy on a fixed prompt set changes at almost every step of a run that learns
    (each update flips a few answers); a policy that stopped moving (a learning rate far too
    low) repeats it exactly. Stateful, so it is computed here rather
    than in :func:`with_derived`; a missing accuracy leaves the streak as it was.
    """

    previous: np.ndarray  # (R,) last finite eval accuracy (NaN: none yet)
    streak: np.ndarray  # (R,)

    @classmethod
    def new(cls, n_runs: int) -> "FlatStreak":
        return cls(np.full(n_runs, np.nan), np.zeros(n_runs))

    def advance(self, accuracy: np.ndarray) -> np.ndarray:
        """(R,) this step's streak (NaN where the accuracy is missing); the state is updated in place."""
        out = np.empty(accuracy.shape)
        flat_advance(self.previous, self.streak, np.ascontiguousarray(accuracy, dtype=float), out)
        return out


#: Signals the detector derives from the shared features (same value live and offline):
#: train reward running ahead of held-out accuracy (reward hacking, inversion), and reward
#: variance beyond what its mean allows for rewards in [0, 1] (Bhatia-Davis: var <= m (1 - m)),
#: which is zero for a 0/1 verifier and positive when rewards leave that range (noise, scaling).
#: The last one is the stall signal (:class:`FlatStreak`), filled in by the callers of ``with_derived``.
DERIVED: tuple[str, ...] = ("reward_minus_eval", "reward_var_excess", "eval_unchanged_steps")
CUBE_SIGNALS: tuple[str, ...] = FEATURES + DERIVED
FLAT_INDEX = CUBE_SIGNALS.index("eval_unchanged_steps")
#: One-sided signals: only a deviation upwards is evidence (fewer repeats than normal is no stall,
#: e.g. right after a rollback, when the streak starts again from 0 on a saturated task).
UP_ONLY = np.array([s == "eval_unchanged_steps" for s in CUBE_SIGNALS])
_REWARD, EVAL_INDEX = FEATURES.index("reward_mean"), FEATURES.index("eval_accuracy")
_TRAJ_MEAN, _TRAJ_STD = FEATURES.index("traj_reward_mean"), FEATURES.index("traj_reward_std")


def with_derived(x: np.ndarray) -> np.ndarray:
    """(..., len(FEATURES)) -> (..., len(CUBE_SIGNALS)); NaN propagates (a missing input skips the signal).
    The stateful stall signal is left NaN here (see :class:`FlatStreak`)."""
    m = x[..., _TRAJ_MEAN]
    excess = x[..., _TRAJ_STD] ** 2 - m * (1.0 - m)
    flat = np.full(x.shape[:-1] + (1,), np.nan)
    return np.concatenate([x, (x[..., _REWARD] - x[..., EVAL_INDEX])[..., None], excess[..., None], flat], axis=-1)


def record_row(features: dict[str, float | None]) -> np.ndarray:
    """(1, len(CUBE_SIGNALS)) one record's feature dict as :func:`with_derived` gives it (missing, non-finite or not a
    number as NaN), in one compiled pass (the stall signal left NaN)."""
    out = np.empty((1, len(CUBE_SIGNALS)))
    cube_row(feature_values(features), _TRAJ_MEAN, _TRAJ_STD, _REWARD, EVAL_INDEX, out[0])
    return out


def features_matrix(frame: pl.DataFrame) -> np.ndarray:
    """(rows, len(FEATURES)) raw features of a frame (NaN where missing)."""
    cols = [
        pl.col(f).cast(pl.Float64).fill_nan(None) if f in frame.columns else pl.lit(None, dtype=pl.Float64).alias(f)
        for f in FEATURES
    ]
    return frame.select(cols).to_numpy().astype(float)


def runs_cube(features: pl.DataFrame, run_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(runs, S, F) raw feature cube (NaN padded) and (runs, S) step numbers (0 = absent), S = max step."""
    sub = features.filter(pl.col("run_id").is_in(list(run_ids)))
    n_steps = int(sub["step"].max() or 1) if sub.height else 1
    cube = np.full((len(run_ids), n_steps, len(CUBE_SIGNALS)), np.nan)
    steps = np.zeros((len(run_ids), n_steps), dtype=int)
    index = {r: i for i, r in enumerate(run_ids)}
    idx = np.array([index[r] for r in sub["run_id"].to_list()], dtype=int)
    step = sub["step"].to_numpy().astype(int)
    ok = step >= 1
    x = with_derived(features_matrix(sub))
    cube[idx[ok], step[ok] - 1] = x[ok]
    steps[idx[ok], step[ok] - 1] = step[ok]
    flat = FlatStreak.new(len(run_ids))
    for s in range(n_steps):
        cube[:, s, FLAT_INDEX] = flat.advance(cube[:, s, EVAL_INDEX])
    return cube, steps


def runs_schedule(features: pl.DataFrame, run_ids: Sequence[str], n_steps: int) -> np.ndarray:
    """(runs, n_steps) logged learning rate laid out like :func:`runs_cube` (NaN where missing, or where the frame
    has no :data:`~rftfm.fm.features.SCHEDULE` column)."""
    out = np.full((len(run_ids), n_steps), np.nan)
    if SCHEDULE not in features.columns:
        return out
    sub = features.filter(pl.col("run_id").is_in(list(run_ids)) & pl.col("step").is_between(1, n_steps))
    index = {r: i for i, r in enumerate(run_ids)}
    idx = np.array([index[r] for r in sub["run_id"].to_list()], dtype=int)
    out[idx, sub["step"].to_numpy().astype(int) - 1] = sub[SCHEDULE].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return out


def tail_threshold(scores: np.ndarray, target: float, tail_fraction: float = 0.2, cap: bool = True) -> float:
    """Score exceeded by a fraction ``target`` of normal runs: an exponential tail above the (1 - tail_fraction)
    quantile."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if scores.size == 0:
        return math.inf
    u = float(np.quantile(scores, 1.0 - tail_fraction))
    excess = scores[scores > u] - u
    if excess.size < 2 or target >= tail_fraction:
        return float(max(np.quantile(scores, 1.0 - target), scores[-1]))
    beta = float(excess.mean())
    value = u + beta * math.log(tail_fraction / target)
    return float(max(value, scores[-1]) if cap else value)
