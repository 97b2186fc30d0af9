"""Offline replay of a per-run rule state over stored records, exactly as a live run feeds it.

The reward rules (:mod:`rftfm.fm.reward_identity`, :mod:`rftfm.fm.binary_reward`) keep a small state per run that
takes one record at a time (``advance(*values, step) -> units``) and can name what it saw (``evidence()``). An
evaluation scores every run of a features frame with them, and a diagnosis asks whether a run broke one lately; both
replay the run's records through a fresh state. Written by hand: a loop over records, no library replays such states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import polars as pl

from rftfm.fm.types import SignalEvidence

#: (step, *values) of one run's records in step order, from its rows of a features frame
RowsOf = Callable[[pl.DataFrame], Iterable[tuple[Any, ...]]]


class RuleState(Protocol):
    def advance(self, *args: Any) -> float: ...

    def evidence(self) -> SignalEvidence: ...


def runs_units(
    features: pl.DataFrame,
    run_ids: Sequence[str],
    n_steps: int,
    rows_of: RowsOf,
    new_state: Callable[[], RuleState],
) -> np.ndarray:
    """(runs, n_steps) a rule's units at each run's records in step order, as live (0 where absent or not judged)."""
    out = np.zeros((len(run_ids), n_steps))
    index = {r: i for i, r in enumerate(run_ids)}
    sub = features.filter(pl.col("run_id").is_in(list(run_ids)) & pl.col("step").is_between(1, n_steps))
    for (run_id,), frame in sub.sort("step").group_by(["run_id"], maintain_order=True):
        state = new_state()
        for step, *values in rows_of(frame):
            out[index[run_id], step - 1] = state.advance(*values, step)
    return out


def recent_evidence(
    features: pl.DataFrame,
    run_id: str,
    step: int,
    rows_of: RowsOf,
    new_state: Callable[[], RuleState],
    recent: int,
) -> SignalEvidence | None:
    """The rule's evidence at the last of ``run_id``'s last ``recent`` records up to ``step`` that broke it (units
    above 1), else ``None``."""
    rows = features.filter((pl.col("run_id") == run_id) & pl.col("step").is_between(1, step))
    if rows.height == 0:
        return None
    last = set(np.sort(rows["step"].unique().to_numpy())[-recent:].tolist())
    state, found = new_state(), None
    for s, *values in rows_of(rows.sort("step")):
        if state.advance(*values, s) > 1.0 and s in last:
            found = state.evidence()
    return found


def column_rows(column: str) -> RowsOf:
    """The rows of a rule that reads one column of a features frame: (step, value)."""
    return lambda frame: [(int(s), v) for s, v in frame.select("step", column).rows()]


def column_units(
    features: pl.DataFrame, run_ids: Sequence[str], n_steps: int, column: str, new_state: Callable[[], RuleState]
) -> np.ndarray:
    """:func:`runs_units` of a one-column rule (0 everywhere where the frame lacks the column)."""
    if column not in features.columns:
        return np.zeros((len(run_ids), n_steps))
    return runs_units(features, run_ids, n_steps, column_rows(column), new_state)


def column_evidence(
    features: pl.DataFrame, run_id: str, step: int, column: str, new_state: Callable[[], RuleState], recent: int
) -> SignalEvidence | None:
    """:func:`recent_evidence` of a one-column rule (``None`` where the frame lacks the column)."""
    if column not in features.columns:
        return None
    return recent_evidence(features, run_id, step, column_rows(column), new_state, recent)


def coalesce_per_step(frame: pl.DataFrame, per_step: pl.DataFrame, column: str) -> pl.DataFrame:
    """``frame`` (run_id, step, ``column``, ...) with ``column`` taken from ``per_step`` (run_id, step, ``_value``)
    wherever that has a value there, else as it was (a value a trainer handed over, or null)."""
    return (
        frame.join(per_step, on=["run_id", "step"], how="left")
        .with_columns(pl.coalesce("_value", column).alias(column))
        .drop("_value")
    )
