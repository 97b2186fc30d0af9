"""Diagnosis baselines, run on the same features and split as the Diagnoser.

* :class:`NearestFingerprint` — k-nearest-neighbour vote over the training diagnoses
  (scikit-learn), on the same diagnosis feature vectors.
* :class:`ExpertRules` — the rule table a practitioner writes from the taxonomy's expected
  fingerprints: each type scores the mean signed z-score of its expected signals
  (``FaultType.signals``: feature, direction) over the last steps; tool-environment types
  need tool calls in the run. No learning beyond the normal profile.

Both return type probabilities (rows sum to 1) so they share the Diagnoser's metrics.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from rftfm.faults.taxonomy import FAULT_TYPES

_CLIP = 10.0


class NearestFingerprint:
    """kNN on standardised diagnosis vectors (missing values as the training mean)."""

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, x: np.ndarray, y: list[str]) -> "NearestFingerprint":
        self.classes = sorted(set(y), key=list(FAULT_TYPES).index)
        self.scaler = StandardScaler().fit(self._clean(x))
        self.knn = KNeighborsClassifier(n_neighbors=min(self.k, len(y)), weights="distance")
        self.knn.fit(self.scaler.transform(self._clean(x)), [self.classes.index(t) for t in y])
        return self

    @staticmethod
    def _clean(x: np.ndarray) -> np.ndarray:
        return np.clip(np.nan_to_num(x, nan=0.0, posinf=_CLIP, neginf=-_CLIP), -1e6, 1e6)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        prob = np.zeros((len(x), len(self.classes)))
        prob[:, self.knn.classes_] = self.knn.predict_proba(self.scaler.transform(self._clean(x)))
        return prob


class ExpertRules:
    """Hand-written rule table from the taxonomy fingerprints (no training): a type scores the mean of its
    fingerprint signals' strongest recent innovation (``z_peak``) in the fingerprint's direction -- the peak,
    not the latest value, since a shift the run's baseline has accepted by diagnosis time is still the evidence."""

    #: a run counts as using the tool when it makes at least this many calls per trajectory
    TOOL_USE = 0.05
    TOOL_CALLS = ("tool_call_frequency", "traj_tool_call_rate")

    def __init__(self, feature_names: list[str], classes: list[str] | None = None) -> None:
        self.classes = classes or list(FAULT_TYPES)
        self.index = {name: i for i, name in enumerate(feature_names)}

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = np.full((len(x), len(self.classes)), -np.inf)
        # the step metric TRL logs for a trainer with tools, else the trajectories' own count
        levels = [x[:, self.index[f"level.{s}"]] for s in self.TOOL_CALLS if f"level.{s}" in self.index]
        tool_level = np.fmax.reduce(levels) if levels else np.zeros(len(x))
        uses_tool = np.nan_to_num(tool_level) >= self.TOOL_USE
        for j, name in enumerate(self.classes):
            ftype = FAULT_TYPES[name]
            cols = [
                (self.index[f"z_peak.{s}"], 1.0 if d == "up" else -1.0)
                for s, d in ftype.signals
                if f"z_peak.{s}" in self.index
            ]
            if not cols:
                continue
            signed = np.column_stack([np.clip(np.nan_to_num(x[:, c]), -_CLIP, _CLIP) * sign for c, sign in cols])
            out[:, j] = signed.mean(axis=1)
            if ftype.task_groups == ("tool",):
                out[~uses_tool, j] = -np.inf
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        s = self.scores(x)
        s = np.where(np.isfinite(s), s, -50.0)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
