"""Failure diagnosis at alarm time: fault family and type, with evidence, or "unknown".

Model (documented in docs/diagnosis.md):

1. A :class:`~rftfm.fm.diagnosis_features.NormalProfile` learned from normal and control runs
   turns a run's history into z-scores per step; :func:`diagnosis_vector` summarises the
   history up to the diagnosis step (recent / last / whole-history z, slope, change vs the
   run's own first steps, raw level).
2. A LightGBM multiclass model over the 16 fault types (trained on several diagnosis steps
   per faulty run, so it does not depend on one alarm delay); family probability is the
   sum of its types' probabilities.
3. Abstention: "unknown" when the best family is not probable enough, or when the history is
   far (k-nearest-neighbour distance) from every training run — both thresholds are set on
   out-of-fold predictions of the training runs, so known faults rarely abstain.
4. Evidence: signals whose recent z-score is large, with direction, observed vs expected
   value, and the first step of the current deviation; the signals the taxonomy expects for
   the diagnosed type come first.

Saved as one JSON file (metadata, profile, kNN reference, LightGBM text model as a string);
loads without pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm.diagnosis_features import (
    KINDS,
    NormalProfile,
    nanmean_columns,
    RunZ,
    diagnosis_feature_names,
    diagnosis_matrix,
    run_z,
    vector_from_z,
)
from rftfm.fm.types import Diagnosis, Hypothesis, SignalEvidence

FORMAT_VERSION = 1
DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "diagnoser.json"
#: diagnosis steps (relative to onset) used to train, so the model sees several alarm delays
TRAIN_OFFSETS = (0, 1, 2, 3, 4, 6, 9)
#: kinds of features that span the kNN novelty space
NOVELTY_KINDS = ("z_recent", "excess")
NOVELTY_K = 3
NOVELTY_MAX_REFERENCE = 1500  # keeps the artifact < 2 MB
#: fraction of known-fault training diagnoses allowed to abstain (per threshold)
ABSTAIN_FAMILY_QUANTILE = 0.01
ABSTAIN_NOVELTY_QUANTILE = 0.99
EVIDENCE_Z = 2.0
SINCE_Z = 1.5
LGB_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 8,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.3,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 1,
    "seed": 7,
    "deterministic": True,
}
NUM_ROUNDS = 80

#: human names of per-step features, for evidence sentences
SIGNAL_NAMES: dict[str, str] = {
    "reward_mean": "train reward",
    "reward_std": "reward sd",
    "eval_accuracy": "eval accuracy",
    "kl": "KL",
    "entropy": "entropy",
    "policy_loss": "policy loss",
    "grad_norm": "grad norm",
    "clip_ratio_region": "clip ratio",
    "completion_length_mean": "response length",
    "completion_length_max": "max response length",
    "truncated_ratio": "truncated ratio",
    "frac_zero_std_groups": "zero-variance groups",
    "traj_reward_mean": "trajectory reward",
    "traj_reward_std": "trajectory reward sd",
    "traj_length_mean": "trajectory length",
    "traj_length_std": "trajectory length sd",
    "traj_advantage_std": "advantage sd",
    "traj_advantage_absmax": "max |advantage|",
    "traj_repetition_mean": "repetition",
    "traj_unique_mean": "unique-token ratio",
    "traj_tool_call_rate": "tool calls",
    "traj_tool_error_rate": "tool errors",
    "traj_empty_rate": "empty responses",
    "traj_short_rate": "short responses",
    "traj_long_rate": "long responses",
    "traj_truncated_rate": "truncated responses",
}
#: features that duplicate a train-step metric; evidence shows only one of each pair
_DUPLICATES = {"traj_reward_mean": "reward_mean", "traj_length_mean": "completion_length_mean",
               "traj_truncated_rate": "truncated_ratio", "traj_reward_std": "reward_std"}


@dataclass
class _Scores:
    type_prob: np.ndarray  # (n, classes)
    novelty: np.ndarray  # (n,)


class Diagnoser:
    """Ranks fault types for a run's history up to an alarm; abstains on unfamiliar patterns."""

    def __init__(self) -> None:
        self.profile: NormalProfile | None = None
        self.classes: list[str] = []
        self.feature_names: list[str] = []
        self.booster: lgb.Booster | None = None
        self.novelty_scale: np.ndarray | None = None
        self.novelty_reference: np.ndarray | None = None
        self.family_threshold: float = 0.0
        self.novelty_thresholds: np.ndarray = np.zeros(0)  # per class
        self.novelty_labels: np.ndarray = np.zeros(0, dtype=int)  # class of each reference row
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ training
    def fit(self, runs: pl.DataFrame, features: pl.DataFrame, alarm_steps: dict[str, int] | None = None) -> "Diagnoser":
        """Learn the normal profile from normal / control runs and the classifier from faulty runs.

        ``runs`` carries the labels (training only); ``features`` is a ``features_frame``.
        ``alarm_steps`` (run_id -> step) trains at those steps (and neighbours); without it,
        at :data:`TRAIN_OFFSETS` after each run's onset.
        """
        features = features.drop([c for c in ("fault_active",) if c in features.columns])
        normal = runs.filter(pl.col("control_or_fault").is_in(["normal", "control"]))
        faulty = runs.filter((pl.col("control_or_fault") == "fault") & pl.col("fault_type").is_not_null())
        if faulty.height == 0:
            raise ValueError("no faulty runs to learn fault types from")
        self.profile = NormalProfile.fit(features, normal if normal.height else runs)
        self.feature_names = diagnosis_feature_names(self.profile.features)
        self.classes = [t for t in FAULT_TYPES if t in set(faulty["fault_type"].to_list())]
        last = dict(features.group_by("run_id").agg(pl.col("step").max()).iter_rows())
        at_steps: dict[str, list[int]] = {}
        for row in faulty.iter_rows(named=True):
            rid, end = row["run_id"], last.get(row["run_id"])
            if end is None:
                continue
            if alarm_steps is not None and rid in alarm_steps:
                base, offsets = int(alarm_steps[rid]), (-1, 0, 1, 3)
            else:
                base, offsets = int(row["onset_step"] or 1), TRAIN_OFFSETS
            at_steps[rid] = sorted({min(max(base + o, 1), end) for o in offsets})
        x, keys = diagnosis_matrix(features, faulty, at_steps, self.profile)
        label = dict(faulty.select("run_id", "fault_type").iter_rows())
        y = np.array([self.classes.index(label[rid]) for rid, _ in keys])
        groups = np.array([rid for rid, _ in keys])
        self._fit_novelty(x, y, groups)
        oof = self._out_of_fold(x, y, groups)
        self.booster = self._train(x, y)
        self._calibrate(oof, y)
        self.info = {
            "train_runs": int(len(set(groups))),
            "train_rows": int(len(y)),
            "normal_runs": int(normal.height),
            "oof_type_accuracy": float(np.mean(oof.type_prob.argmax(1) == y)),
        }
        return self

    def _train(self, x: np.ndarray, y: np.ndarray) -> lgb.Booster:
        params = dict(LGB_PARAMS, num_class=len(self.classes))
        if len(self.classes) == 1:
            params.update(objective="multiclass", num_class=1)
        data = lgb.Dataset(x, label=y, feature_name=[n.replace(".", "__") for n in self.feature_names], free_raw_data=True)
        return lgb.train(params, data, num_boost_round=NUM_ROUNDS)

    def _out_of_fold(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4) -> _Scores:
        """Out-of-fold type probabilities and novelty of the training rows (for calibration)."""
        from sklearn.model_selection import GroupKFold

        prob = np.zeros((len(y), len(self.classes)))
        splitter = GroupKFold(n_splits=min(folds, len(set(groups))))
        for train_idx, test_idx in splitter.split(x, y, groups):
            booster = self._train(x[train_idx], y[train_idx])
            prob[test_idx] = self._predict(booster, x[test_idx])
        return _Scores(prob, self._novelty(x, y, exclude=groups))

    def _predict(self, booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
        prob = np.asarray(booster.predict(x))
        return prob.reshape(len(x), -1)

    def _novelty_space(self, x: np.ndarray) -> np.ndarray:
        idx = [i for i, n in enumerate(self.feature_names) if n.split(".")[0] in NOVELTY_KINDS]
        sub = np.nan_to_num(x[:, idx], nan=0.0)
        return np.clip(sub, -10.0, 10.0)

    def _fit_novelty(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
        space = self._novelty_space(x)
        self.novelty_scale = np.maximum(space.std(axis=0), 0.5)
        keep = np.arange(len(space))
        if len(keep) > NOVELTY_MAX_REFERENCE:  # keeps the saved artifact small
            keep = np.sort(np.random.default_rng(0).choice(keep, NOVELTY_MAX_REFERENCE, replace=False))
        self.novelty_reference = np.round(space[keep] / self.novelty_scale, 2)
        self._reference_groups = groups[keep]
        self.novelty_labels = y[keep]

    def _novelty(self, x: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Mean distance to the k nearest training rows of class ``labels[i]`` (of other runs when ``exclude`` is given)."""
        assert self.novelty_reference is not None and self.novelty_scale is not None
        q = self._novelty_space(x) / self.novelty_scale
        ref = self.novelty_reference
        d = np.sqrt(np.maximum(((q**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2 * q @ ref.T), 0.0)) / math.sqrt(ref.shape[1])
        if exclude is not None:
            d = np.where(exclude[:, None] == self._reference_groups[None, :], np.inf, d)
        d = np.where(labels[:, None] == self.novelty_labels[None, :], d, np.inf)
        k = min(NOVELTY_K, ref.shape[0])
        return np.sort(d, axis=1)[:, :k].mean(axis=1)

    def _family_prob(self, type_prob: np.ndarray) -> tuple[list[str], np.ndarray]:
        families = sorted({FAULT_TYPES[t].family for t in self.classes})
        out = np.zeros((type_prob.shape[0], len(families)))
        for j, t in enumerate(self.classes):
            out[:, families.index(FAULT_TYPES[t].family)] += type_prob[:, j]
        return families, out

    def _calibrate(self, oof: _Scores, y: np.ndarray) -> None:
        """Abstention thresholds from out-of-fold scores of the training diagnoses.

        Family: a low quantile of the best family's probability. Novelty, per type: a high
        quantile of the distance of that type's diagnoses to the nearest other runs of the type,
        so a pattern the model assigns to a type it does not resemble is called unknown.
        """
        _, fam = self._family_prob(oof.type_prob)
        self.family_threshold = float(np.quantile(fam.max(1), ABSTAIN_FAMILY_QUANTILE))
        thresholds = []
        for c in range(len(self.classes)):
            d = oof.novelty[(y == c) & np.isfinite(oof.novelty)]
            thresholds.append(float(np.quantile(d, ABSTAIN_NOVELTY_QUANTILE)) if d.size else math.inf)
        self.novelty_thresholds = np.array(thresholds)

    # ------------------------------------------------------------------ inference
    def _check(self) -> None:
        if self.booster is None or self.profile is None:
            raise RuntimeError("Diagnoser is not fitted; call fit() or load()")

    def diagnose(
        self,
        history: pl.DataFrame,
        run_id: str,
        step: int,
        task_group: str | None = None,
        model_size: str | None = None,
    ) -> Diagnosis:
        """Diagnose ``run_id`` from its ``features_frame`` rows with ``step <= step``."""
        self._check()
        assert self.profile is not None and self.booster is not None
        if "run_id" in history.columns:
            history = history.filter(pl.col("run_id") == run_id)
        history = history.filter(pl.col("step") <= step)
        if history.height == 0:
            return Diagnosis(run_id=run_id, step=step, ranked=[], unknown=True, summary="unknown fault: no history to diagnose")
        rz = run_z(history, self.profile, task_group, model_size)
        x = vector_from_z(rz)[None, :]
        prob = self._predict(self.booster, x)[0]
        order = np.argsort(-prob)
        novelty = float(self._novelty(x, order[:1])[0])
        _, fam = self._family_prob(prob[None, :])
        ranked = [Hypothesis(family=FAULT_TYPES[self.classes[i]].family, fault_type=self.classes[i], probability=round(float(prob[i]), 4)) for i in order]
        unknown = bool(fam.max() < self.family_threshold or novelty > self.novelty_thresholds[order[0]])
        evidence = self.evidence(rz, None if unknown else ranked[0].fault_type)
        return Diagnosis(
            run_id=run_id, step=int(step), ranked=ranked, unknown=unknown, evidence=evidence,
            summary=summary_sentence(None if unknown else ranked[0].fault_type, evidence, ranked[0].fault_type),
        )

    def scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(type probabilities, abstain flags) for a matrix of diagnosis vectors (for evaluation)."""
        self._check()
        assert self.booster is not None
        prob = self._predict(self.booster, x)
        _, fam = self._family_prob(prob)
        best = prob.argmax(1)
        unknown = (fam.max(1) < self.family_threshold) | (self._novelty(x, best) > self.novelty_thresholds[best])
        return prob, unknown

    def evidence(self, rz: RunZ, fault_type: str | None, limit: int = 6) -> list[SignalEvidence]:
        """Signals that moved vs the normal profile over the last steps, expected ones first."""
        z = rz.z
        recent = slice(max(0, len(z) - 3), len(z))
        zr, value, expected = nanmean_columns(z[recent]), nanmean_columns(rz.values[recent]), nanmean_columns(rz.mean[recent])
        expected_signals = [s for s, _ in FAULT_TYPES[fault_type].signals] if fault_type in FAULT_TYPES else []
        items = []
        for j, name in enumerate(self.profile.features if self.profile else []):
            if not np.isfinite(zr[j]) or abs(zr[j]) < EVIDENCE_Z:
                continue
            if _DUPLICATES.get(name) in self.profile.features and abs(zr[self.profile.features.index(_DUPLICATES[name])]) >= EVIDENCE_Z:
                continue
            sign = 1 if zr[j] > 0 else -1
            since = int(rz.steps[-1])
            gap = 0
            for i in range(len(z) - 1, -1, -1):
                if np.isfinite(z[i, j]) and sign * z[i, j] >= SINCE_Z:
                    since, gap = int(rz.steps[i]), 0
                else:
                    gap += 1
                    if gap > 1:
                        break
            ratio = float(value[j] / expected[j]) if np.isfinite(expected[j]) and abs(expected[j]) > 1e-9 else None
            items.append(SignalEvidence(
                signal=name, direction="up" if sign > 0 else "down", value=_round(value[j]), expected=_round(expected[j]),
                z=_round(zr[j]), ratio=_round(ratio), since_step=since,
            ))
        items.sort(key=lambda e: (e.signal not in expected_signals, -abs(e.z or 0.0)))
        return items[:limit]

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        self._check()
        assert self.booster is not None and self.profile is not None
        return {
            "format": "rftfm-diagnoser",
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "feature_names": self.feature_names,
            "family_threshold": self.family_threshold,
            "novelty_thresholds": [float(v) if math.isfinite(v) else None for v in self.novelty_thresholds],
            "novelty_labels": self.novelty_labels.tolist(),
            "novelty_scale": [round(float(v), 6) for v in self.novelty_scale],
            "novelty_reference": self.novelty_reference.tolist(),
            "novelty_groups": _group_codes(self._reference_groups),
            "info": self.info,
            "profile": self.profile.to_json(),
            "lightgbm_model": self.booster.model_to_string(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Diagnoser":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != "rftfm-diagnoser":
            raise ValueError(f"{path} is not an rftfm diagnoser file")
        self = cls()
        self.classes = list(data["classes"])
        self.feature_names = list(data["feature_names"])
        self.family_threshold = float(data["family_threshold"])
        self.novelty_thresholds = np.array([math.inf if v is None else v for v in data["novelty_thresholds"]], dtype=float)
        self.novelty_labels = np.array(data["novelty_labels"], dtype=int)
        self.novelty_scale = np.array(data["novelty_scale"], dtype=float)
        self.novelty_reference = np.array(data["novelty_reference"], dtype=float)
        self._reference_groups = np.array(data.get("novelty_groups", []))
        self.info = dict(data.get("info", {}))
        self.profile = NormalProfile.from_json(data["profile"])
        self.booster = lgb.Booster(model_str=data["lightgbm_model"])
        return self

    @classmethod
    def load_default(cls) -> "Diagnoser":
        if not DEFAULT_ARTIFACT.exists():
            raise FileNotFoundError(f"no default diagnoser at {DEFAULT_ARTIFACT}; train one with `rftfm fit diagnoser`")
        return cls.load(DEFAULT_ARTIFACT)


def _group_codes(groups: np.ndarray) -> list[int]:
    """Run ids of the reference rows as small integers (only equality matters)."""
    codes: dict[str, int] = {}
    return [codes.setdefault(str(g), len(codes)) for g in groups]


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def describe(e: SignalEvidence) -> str:
    """'train reward +0.30' or 'grad norm x4.2' for one piece of evidence."""
    name = SIGNAL_NAMES.get(e.signal, e.signal)
    if e.value is None or e.expected is None:
        return f"{name} {e.direction}"
    if e.ratio is not None and e.expected > 0 and e.value > 0 and (e.ratio >= 2.0 or e.ratio <= 0.5):
        return f"{name} x{e.ratio:.2g}"
    return f"{name} {e.value - e.expected:+.2f}"


def summary_sentence(fault_type: str | None, evidence: list[SignalEvidence], closest: str | None = None) -> str:
    """One actionable sentence, e.g. 'reward_hacking since step 11: train reward +0.30 while eval accuracy -0.20'."""
    head = fault_type or "unknown fault"
    if not evidence:
        tail = "no signal far from the normal profile"
        return f"{head}: {tail}" + (f" (closest known: {closest})" if fault_type is None and closest else "")
    top = evidence[:3]
    since = min(e.since_step for e in top if e.since_step is not None) if any(e.since_step is not None for e in top) else None
    parts = [describe(e) for e in top]
    text = parts[0] if len(parts) == 1 else f"{parts[0]} while " + ", ".join(parts[1:])
    sentence = f"{head}" + (f" since step {since}" if since is not None else "") + f": {text}"
    if fault_type is None and closest:
        sentence += f" (closest known: {closest})"
    return sentence


__all__ = ["Diagnoser", "DEFAULT_ARTIFACT", "summary_sentence", "describe", "KINDS"]
