"""Anomaly Transformer (Xu et al., ICLR 2022) as PyOD 3.x ships it (``pyod.models.ts_anomaly_transformer``).

PyOD scores a single time series, so the normal training runs are concatenated (each
standardised) for fitting, and each evaluated run is scored on its own. Runs shorter than
the window are front-padded with their first step.
"""

from __future__ import annotations

import numpy as np
import torch
from pyod.models.ts_anomaly_transformer import AnomalyTransformer

from rftfm.bench.baselines.base import Baseline, RunCubes, Standardiser


class AnomalyTransformerBaseline(Baseline):
    name = "AnomalyTransformer"

    def __init__(self, window: int = 8, epochs: int = 5, seed: int = 0) -> None:
        self.window, self.epochs, self.seed = window, epochs, seed

    def _series(self, x: np.ndarray, steps: np.ndarray) -> np.ndarray:
        series = x[steps > 0]
        if len(series) < self.window:
            pad = np.repeat(
                series[:1] if len(series) else np.zeros((1, x.shape[-1])), self.window - len(series), axis=0
            )
            series = np.concatenate([pad, series])
        return series

    def fit(self, normal: RunCubes) -> None:
        torch.manual_seed(self.seed)
        self.std = Standardiser().fit(normal.cube)
        x = self.std.apply(normal.cube)
        series = np.concatenate([self._series(x[i], normal.steps[i]) for i in range(len(x))])
        self.model = AnomalyTransformer(
            window_size=self.window,
            d_model=32,
            n_heads=2,
            n_layers=2,
            epochs=self.epochs,
            lr=1e-3,
            batch_size=64,
            dropout=0.0,
            device="cpu",
        ).fit(series)

    def score(self, runs: RunCubes) -> np.ndarray:
        x = self.std.apply(runs.cube)
        out = np.full(runs.steps.shape, np.nan)
        for i in range(len(x)):
            present = runs.steps[i] > 0
            series = self._series(x[i], runs.steps[i])
            scores = self.model.decision_function(series)[-int(present.sum()) :] if present.any() else []
            out[i, present] = scores
        return out
