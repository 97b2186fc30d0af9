"""TranAD (Tuli, Casale and Jennings, VLDB 2022), implemented here from the paper in torch.

No maintained package ships TranAD for current torch (the authors' research code pins old
torch releases and is not a library), so this module re-implements its core: a transformer
encoder over a window plus a focus score, two decoders, two-phase self-conditioning
(phase 2 feeds phase 1's squared reconstruction error back as focus) and the adversarial
loss weighting ``1/n`` / ``1 - 1/n`` over epochs ``n``. The anomaly score of a step is
``0.5 |O1 - x|^2 + 0.5 |O2_hat - x|^2`` averaged over signals, for the window ending at that
step (causal). Inputs are min-max scaled on normal data, as in the paper.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rftfm.bench.baselines.base import Baseline, RunCubes, Standardiser


class _PositionalEncoding(nn.Module):
    def __init__(self, d_model: int, max_len: int = 256) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : pe[:, 1::2].shape[1]]
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class _TranADNet(nn.Module):
    def __init__(self, n_feats: int, d_ff: int = 16) -> None:
        super().__init__()
        d_model = 2 * n_feats
        heads = n_feats if d_model % n_feats == 0 else 2
        self.n_feats = n_feats
        self.pos = _PositionalEncoding(d_model)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.1, batch_first=True),
            num_layers=1,
            enable_nested_tensor=False,
        )
        self.decoder1 = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, heads, d_ff, dropout=0.1, batch_first=True), num_layers=1
        )
        self.decoder2 = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, heads, d_ff, dropout=0.1, batch_first=True), num_layers=1
        )
        self.out = nn.Sequential(nn.Linear(d_model, n_feats), nn.Sigmoid())

    def _encode(
        self, window: torch.Tensor, focus: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        src = torch.cat([window, focus], dim=-1) * math.sqrt(self.n_feats)
        memory = self.encoder(self.pos(src))
        tgt = target.repeat(1, 1, 2)
        return tgt, memory

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        target = window[:, -1:, :]
        focus = torch.zeros_like(window)
        tgt, memory = self._encode(window, focus, target)
        o1 = self.out(self.decoder1(tgt, memory))
        o2 = self.out(self.decoder2(tgt, memory))
        focus = (o1 - target) ** 2  # phase 2: self-conditioning on phase-1 error
        tgt, memory = self._encode(window, focus.expand_as(window), target)
        o2_hat = self.out(self.decoder2(tgt, memory))
        return o1, o2, o2_hat


class TranADBaseline(Baseline):
    name = "TranAD"

    def __init__(self, window: int = 10, epochs: int = 5, seed: int = 0) -> None:
        self.window, self.epochs, self.seed = window, epochs, seed

    def _windows(self, runs: RunCubes) -> tuple[np.ndarray, np.ndarray]:
        """Causal windows (N, W, F) ending at every present step, and their (run, step index) positions."""
        x = np.clip((self.std.apply(runs.cube) - self.lo) / self.span, -1.0, 2.0)
        wins, where = [], []
        for i in range(len(x)):
            present = np.flatnonzero(runs.steps[i] > 0)
            if not len(present):
                continue
            series = x[i, present]
            padded = np.concatenate([np.repeat(series[:1], self.window - 1, axis=0), series])
            for j, s in enumerate(present):
                wins.append(padded[j : j + self.window])
                where.append((i, s))
        return np.array(wins, dtype=np.float32), np.array(where, dtype=int).reshape(-1, 2)

    def fit(self, normal: RunCubes) -> None:
        torch.manual_seed(self.seed)
        self.std = Standardiser().fit(normal.cube)
        z = self.std.apply(normal.cube)[normal.steps > 0]
        self.lo, hi = z.min(axis=0), z.max(axis=0)
        self.span = np.where(hi - self.lo > 1e-6, hi - self.lo, 1.0)
        wins, _ = self._windows(normal)
        self.net = _TranADNet(wins.shape[-1])
        opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=1e-5)
        data = torch.from_numpy(wins)
        gen = torch.Generator().manual_seed(self.seed)
        self.net.train()
        for epoch in range(1, self.epochs + 1):
            w = 1.0 / epoch
            for batch in torch.split(data[torch.randperm(len(data), generator=gen)], 128):
                target = batch[:, -1:, :]
                o1, o2, o2_hat = self.net(batch)
                l1 = w * ((o1 - target) ** 2).mean() + (1 - w) * ((o2_hat - target) ** 2).mean()
                l2 = w * ((o2 - target) ** 2).mean() - (1 - w) * ((o2_hat - target) ** 2).mean()
                opt.zero_grad()
                (l1 + l2).backward()
                opt.step()
        self.net.eval()

    def score(self, runs: RunCubes) -> np.ndarray:
        out = np.full(runs.steps.shape, np.nan)
        wins, where = self._windows(runs)
        if not len(wins):
            return out
        with torch.no_grad():
            parts = []
            for batch in torch.split(torch.from_numpy(wins), 1024):
                target = batch[:, -1:, :]
                o1, _, o2_hat = self.net(batch)
                parts.append((0.5 * (o1 - target) ** 2 + 0.5 * (o2_hat - target) ** 2).mean(dim=(1, 2)).numpy())
        out[where[:, 0], where[:, 1]] = np.concatenate(parts)
        return out
