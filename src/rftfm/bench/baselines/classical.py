"""Isolation Forest and LOF (PyOD) on per-step signal vectors, as the published baselines apply them."""

from __future__ import annotations

import numpy as np
from pyod.models.iforest import IForest
from pyod.models.lof import LOF

from rftfm.bench.baselines.base import Baseline, RunCubes, Standardiser


class _PointBaseline(Baseline):
    """A PyOD point detector over standardised step vectors (no time context)."""

    def make(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, normal: RunCubes) -> None:
        self.std = Standardiser().fit(normal.cube)
        x = self.std.apply(normal.cube)[normal.steps > 0]
        self.model = self.make().fit(x)

    def score(self, runs: RunCubes) -> np.ndarray:
        x = self.std.apply(runs.cube)
        flat = self.model.decision_function(x.reshape(-1, x.shape[-1])).reshape(x.shape[:2])
        return np.where(runs.steps > 0, flat, np.nan)


class IsolationForestBaseline(_PointBaseline):
    name = "IsolationForest"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def make(self):
        return IForest(n_estimators=200, random_state=self.seed)


class LOFBaseline(_PointBaseline):
    name = "LOF"

    def make(self):
        return LOF(n_neighbors=20)
