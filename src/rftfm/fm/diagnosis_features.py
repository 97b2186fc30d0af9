"""Diagnosis features: how a run's history up to the alarm differs from normal training.

Built on :mod:`rftfm.fm.features` (one row per step). For every per-step feature ``f``
and the run's history up to the diagnosis step ``t`` (only what is known live):

* ``z_recent.f``  mean z-score over the last :data:`RECENT` steps vs the normal profile
  of the same (task group, model size) at the same step index;
* ``z_last.f``    z-score at step ``t``;
* ``z_all.f``     mean z-score over the whole history;
* ``z_slope.f``   slope of the z-score over the last :data:`SLOPE_WINDOW` steps;
* ``excess.f``    change since the run's own first steps, minus the change normal runs
  show over the same steps (in normal-profile standard deviations);
* ``level.f``     raw mean over the last :data:`RECENT` steps.

The normal profile (:class:`NormalProfile`) is learned from normal and un-injected control
runs: per step mean and standard deviation, smoothed over neighbouring steps, with a fall-back
chain (task, size) -> (task, *) -> (*, size) -> (*, *) for configurations it has not seen.
It is plain JSON. Label columns are never read.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import polars as pl

from rftfm.fm.features import FEATURES

RECENT = 3
SLOPE_WINDOW = 5
EARLY = 3
Z_CLIP = 30.0
#: window (steps either side) pooled when estimating a step's normal mean / sd
SMOOTH = 1
KINDS = ("z_recent", "z_last", "z_all", "z_slope", "excess", "level")
ANY = "*"
#: fractions in [0, 1]: a change smaller than a few per cent is never called a deviation
RATE_FEATURES = frozenset({
    "eval_accuracy", "clip_ratio_region", "truncated_ratio", "frac_zero_std_groups", "traj_repetition_mean",
    "traj_unique_mean", "traj_tool_call_rate", "traj_tool_error_rate", "traj_empty_rate", "traj_short_rate",
    "traj_long_rate", "traj_truncated_rate",
})
RATE_SD_FLOOR = 0.02


def diagnosis_feature_names(base: Iterable[str] = FEATURES) -> list[str]:
    return [f"{kind}.{name}" for kind in KINDS for name in base]


@dataclass
class NormalProfile:
    """Per-step mean / sd of every feature in normal runs, keyed by ``task|size``."""

    features: list[str]
    num_steps: int
    mean: dict[str, list[list[float | None]]] = field(default_factory=dict)  # key -> [step][feature]
    std: dict[str, list[list[float | None]]] = field(default_factory=dict)
    floor: list[float] = field(default_factory=list)  # per-feature sd floor

    @classmethod
    def fit(cls, features: pl.DataFrame, normal_runs: pl.DataFrame, base: Iterable[str] = FEATURES) -> "NormalProfile":
        """Learn from ``features`` rows of the runs listed in ``normal_runs`` (run_id, task_group, model_size)."""
        base = list(base)
        meta = normal_runs.select("run_id", "task_group", "model_size")
        frame = features.join(meta, on="run_id", how="inner")
        if frame.height == 0:
            raise ValueError("no normal-run features to learn a normal profile from")
        num_steps = int(frame["step"].max())
        pooled_sd = np.array([_nan_to_zero(frame[c].cast(pl.Float64).std()) for c in base])
        floor = [max(0.25 * s, RATE_SD_FLOOR if name in RATE_FEATURES else 1e-3) for name, s in zip(base, pooled_sd)]
        profile = cls(base, num_steps, floor=floor)
        keys = {ANY + "|" + ANY: frame}
        for (task, size), part in frame.group_by("task_group", "model_size"):
            keys[f"{task}|{size}"] = part
        for (task,), part in frame.group_by("task_group"):
            keys[f"{task}|{ANY}"] = part
        for (size,), part in frame.group_by("model_size"):
            keys[f"{ANY}|{size}"] = part
        for key, part in keys.items():
            values = part.select("step", *base).to_numpy().astype(float)
            mean_rows, std_rows = [], []
            for step in range(1, num_steps + 1):
                window = values[np.abs(values[:, 0] - step) <= SMOOTH][:, 1:]
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(window, axis=0) if len(window) else np.full(len(base), np.nan)
                    std = np.nanstd(window, axis=0) if len(window) > 1 else np.full(len(base), np.nan)
                mean_rows.append([_none(v) for v in mean])
                std_rows.append([_none(v) for v in std])
            profile.mean[key] = mean_rows
            profile.std[key] = std_rows
        return profile

    def resolve(
        self, task_group: str | None, model_size: str | None, steps: np.ndarray | None = None, values: np.ndarray | None = None
    ) -> str:
        """The most specific profile key available for a configuration.

        A task group the profile has never seen (or an unknown one) is matched to the seen
        configuration whose normal profile is closest to the run's own first steps (a task
        without tool calls is not compared with a tool task); the model size is kept when known.
        """
        for key in (f"{task_group}|{model_size}", f"{task_group}|{ANY}"):
            if key in self.mean:
                return key
        if steps is not None and values is not None and len(steps):
            configs = [k for k in self.mean if ANY not in k]
            same_size = [k for k in configs if k.endswith(f"|{model_size}")]
            closest = self.closest(same_size or configs, steps, values)
            if closest is not None:
                return closest
        for key in (f"{ANY}|{model_size}", f"{ANY}|{ANY}"):
            if key in self.mean:
                return key
        raise KeyError("normal profile is empty")

    def closest(self, keys: list[str], steps: np.ndarray, values: np.ndarray) -> str | None:
        """The key whose profile best fits the first :data:`EARLY` steps (mean |z| over features, clipped at 10)."""
        best, best_fit = None, math.inf
        first = slice(0, min(EARLY, len(steps)))
        for key in keys:
            mean, std = self.arrays(key, steps[first])
            with np.errstate(all="ignore"):
                z = np.abs((values[first] - mean) / std)
            fit = float(np.nanmean(np.minimum(nanmean_columns(z), 10.0))) if np.isfinite(z).any() else math.inf
            if fit < best_fit:
                best, best_fit = key, fit
        return best

    def arrays(self, key: str, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) arrays of shape (len(steps), features); sd floored, missing filled from (*, *)."""
        idx = np.clip(steps.astype(int), 1, self.num_steps) - 1
        mean = np.array(self.mean[key], dtype=float)[idx]
        std = np.array(self.std[key], dtype=float)[idx]
        fallback = ANY + "|" + ANY
        if key != fallback:
            mean = np.where(np.isfinite(mean), mean, np.array(self.mean[fallback], dtype=float)[idx])
            std = np.where(np.isfinite(std), std, np.array(self.std[fallback], dtype=float)[idx])
        std = np.maximum(np.nan_to_num(std, nan=0.0), np.array(self.floor))
        return mean, std

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features, "num_steps": self.num_steps, "mean": self.mean, "std": self.std, "floor": self.floor}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "NormalProfile":
        return cls(data["features"], int(data["num_steps"]), data["mean"], data["std"], data["floor"])


def _none(value: float) -> float | None:
    return None if not math.isfinite(float(value)) else round(float(value), 6)


def _nan_to_zero(value: Any) -> float:
    return 0.0 if value is None or not math.isfinite(float(value)) else float(value)


@dataclass
class RunZ:
    """A run's history as arrays: steps, raw values, profile mean / sd and z-scores."""

    steps: np.ndarray
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def z(self) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.clip((self.values - self.mean) / self.std, -Z_CLIP, Z_CLIP)


def run_z(history: pl.DataFrame, profile: NormalProfile, task_group: str | None, model_size: str | None) -> RunZ:
    """Z-scores of one run's history (rows sorted by step) against the normal profile."""
    history = history.sort("step")
    steps = history["step"].to_numpy()
    values = np.column_stack([
        history[c].cast(pl.Float64).fill_null(np.nan).to_numpy() if c in history.columns else np.full(len(steps), np.nan)
        for c in profile.features
    ]) if len(steps) else np.zeros((0, len(profile.features)))
    mean, std = profile.arrays(profile.resolve(task_group, model_size, steps, values), steps)
    return RunZ(steps, values, mean, std)


def nanmean_columns(x: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN (NaN for an all-missing column, without a warning)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


def _slope(z: np.ndarray) -> np.ndarray:
    if len(z) < 2:
        return np.zeros(z.shape[1])
    t = np.arange(len(z), dtype=float)
    t -= t.mean()
    out = np.full(z.shape[1], np.nan)
    for j in range(z.shape[1]):
        ok = np.isfinite(z[:, j])
        if ok.sum() >= 2:
            tj = t[ok] - t[ok].mean()
            denom = float((tj**2).sum())
            out[j] = float((tj * (z[ok, j] - z[ok, j].mean())).sum() / denom) if denom else 0.0
    return out


def vector_from_z(rz: RunZ) -> np.ndarray:
    """The diagnosis feature vector (:func:`diagnosis_feature_names` order) of a run's history."""
    n = rz.values.shape[1]
    if len(rz.steps) == 0:
        return np.full(n * len(KINDS), np.nan)
    z = rz.z
    recent = slice(max(0, len(z) - RECENT), len(z))
    early = slice(0, min(EARLY, len(z)))
    z_recent = nanmean_columns(z[recent])
    z_last = z[-1]
    z_all = nanmean_columns(z)
    z_slope = _slope(z[max(0, len(z) - SLOPE_WINDOW):])
    level = nanmean_columns(rz.values[recent])
    with np.errstate(all="ignore"):
        observed = level - nanmean_columns(rz.values[early])
        expected = nanmean_columns(rz.mean[recent]) - nanmean_columns(rz.mean[early])
        excess = np.clip((observed - expected) / nanmean_columns(rz.std[recent]), -Z_CLIP, Z_CLIP)
    return np.concatenate([z_recent, z_last, z_all, z_slope, excess, level])


def diagnosis_vector(
    history: pl.DataFrame, profile: NormalProfile, task_group: str | None = None, model_size: str | None = None
) -> np.ndarray:
    return vector_from_z(run_z(history, profile, task_group, model_size))


def diagnosis_matrix(
    features: pl.DataFrame,
    runs: pl.DataFrame,
    at_steps: dict[str, list[int]],
    profile: NormalProfile,
) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Feature vectors of many (run, step) pairs; ``runs`` gives each run's task group and size.

    Computes each run's z-scores once and slices the history for every requested step.
    """
    meta = {r["run_id"]: r for r in runs.select("run_id", "task_group", "model_size").iter_rows(named=True)}
    rows, keys = [], []
    wanted = features.filter(pl.col("run_id").is_in(list(at_steps)))
    for (run_id,), part in wanted.group_by("run_id", maintain_order=True):
        info = meta.get(run_id, {})
        rz = run_z(part, profile, info.get("task_group"), info.get("model_size"))
        for step in at_steps[run_id]:
            keep = rz.steps <= step
            rows.append(vector_from_z(RunZ(rz.steps[keep], rz.values[keep], rz.mean[keep], rz.std[keep])))
            keys.append((run_id, int(step)))
    width = len(profile.features) * len(KINDS)
    return (np.vstack(rows) if rows else np.zeros((0, width))), keys
