"""Detection baselines evaluated side by side with RFT-FM (same split, same run-level rule)."""

from __future__ import annotations

from rftfm.bench.baselines.base import Baseline, RunCubes


def make_baselines(seed: int = 0, names: list[str] | None = None) -> list[Baseline]:
    """Fresh instances of the baselines (all, or those named, case-insensitive)."""
    from rftfm.bench.baselines.anomaly_transformer import AnomalyTransformerBaseline
    from rftfm.bench.baselines.classical import IsolationForestBaseline, LOFBaseline
    from rftfm.bench.baselines.rules import FlagEverythingBaseline, StaticRulesBaseline
    from rftfm.bench.baselines.streaming import ADWINBaseline, PageHinkleyBaseline
    from rftfm.bench.baselines.tranad import TranADBaseline

    every = [
        IsolationForestBaseline(seed), LOFBaseline(), AnomalyTransformerBaseline(seed=seed),
        TranADBaseline(seed=seed), StaticRulesBaseline(), FlagEverythingBaseline(), PageHinkleyBaseline(),
        ADWINBaseline(),
    ]
    if names is None:
        return every
    wanted = {n.lower() for n in names}
    unknown = wanted - {b.name.lower() for b in every}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; known: {[b.name for b in every]}")
    return [b for b in every if b.name.lower() in wanted]


__all__ = ["Baseline", "RunCubes", "make_baselines"]
