"""What the run-counting scripts share (scripts/non_finite_runs.py, scripts/reward_identity_runs.py, the loss
rules' scripts): a benchmark loaded from ``--data``, each run's kind (``normal``, ``control``, ``fault <type>``), and
what they print per kind and per loss type.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl

from rftfm.bench.eval_detection import _load


def load_runs(
    doc: str, parser: argparse.ArgumentParser | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, list[str], list[str]]:
    """The benchmark ``--data`` names on the command line (``doc``: the script's help; ``parser``: one with the
    script's own options, ``--data`` added here): its runs table, features, run ids and each run's kind."""
    parser = parser or argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a benchmark directory")
    runs, features = _load(parser.parse_args().data)
    kinds = [
        f"{k} {t}" if k == "fault" else k
        for k, t in zip(runs["control_or_fault"].to_list(), runs["fault_type"].fill_null("").to_list())
    ]
    return runs, features, runs["run_id"].to_list(), kinds


def print_counts(kinds: list[str], hits: Counter, headline: str, aside: Counter | None = None, note: str = "") -> None:
    """``headline``, then per kind the runs in ``hits`` of all runs of that kind (and ``aside``'s count, with
    ``note``)."""
    print(f"\n{headline}:")
    total = Counter(kinds)
    for kind in sorted(total):
        extra = f" ({aside[kind]} {note})" if aside is not None else ""
        print(f"  {kind}: {hits[kind]} of {total[kind]}{extra}")


NEVER = 10**9  # the onset of a run without a fault: every record is healthy


@dataclass
class FirstFirings:
    """Per kind, the runs a rule first fires on before a fault's onset and at or after it, and the records from onset
    to that first firing (what the rule scripts print)."""

    before: Counter = field(default_factory=Counter)
    after: Counter = field(default_factory=Counter)
    delays: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, first: int, onset: int) -> bool:
        """Count a run whose rule first fires at step ``first``; whether that is before its onset."""
        if first < onset:
            self.before[kind] += 1
            return True
        self.after[kind] += 1
        self.delays.setdefault(kind, []).append(first - int(onset))
        return False

    def print(self, kinds: list[str], healthy_headline: str, aside: Counter, note: str, verb: str, noun: str) -> None:
        """Per kind, the runs fired on before any fault (``healthy_headline``, with ``aside``'s counts and ``note``)
        and at or after a fault's onset (``verb``: "broken", "flagged"), then the median delays (``noun``: "break")."""
        print_counts(kinds, self.before, healthy_headline, aside, note)
        print_counts(kinds, self.after, f"{verb} at or after a fault's onset")
        print(f"median records from onset to the first {noun}: "
              + (", ".join(f"{k} {np.median(v):g}" for k, v in sorted(self.delays.items())) or f"none {verb}"))


def onsets(runs: pl.DataFrame, kinds: list[str]) -> np.ndarray:
    """Each run's onset step (:data:`NEVER` for normal and control runs)."""
    return np.array([o if k.startswith("fault") and o is not None else NEVER
                     for o, k in zip(runs["onset_step"].to_list(), kinds)])


def healthy_peaks(stats: np.ndarray, steps: np.ndarray, onset: np.ndarray) -> np.ndarray:
    """(R,) each run's largest statistic over its healthy records (every record of a normal or control run, a faulty
    run's before onset; NaN: none judged)."""
    healthy = (steps > 0) & (steps < onset[:, None])
    return np.fmax.reduce(np.where(healthy, stats, np.nan), axis=1)


def print_healthy_peaks(
    peak: np.ndarray, ids: list[str], loss_types: np.ndarray, what: str, show: Callable[[float], str],
    limit: float | None = None,
) -> None:
    """Per loss type, the runs whose healthy records were judged (``peak`` of :func:`healthy_peaks`), how many pass
    ``limit`` if given, the median and largest of their peaks (``what``, each as ``show`` writes it), then the five
    runs with the largest."""
    for loss_type in sorted(set(loss_types)):
        judged = np.isfinite(peak) & (loss_types == loss_type)
        if judged.any():
            alarmed = f", {int((peak[judged] > limit).sum())} alarmed" if limit is not None else ""
            print(f"healthy records, loss type {loss_type}: {int(judged.sum())} runs judged{alarmed}; largest {what} "
                  f"per run: median {show(float(np.median(peak[judged])))}, largest {show(float(peak[judged].max()))}")
    for r in np.argsort(-np.nan_to_num(peak, nan=-np.inf))[:5]:
        print(f"  {ids[r]} ({loss_types[r]}): {show(float(peak[r]))}")


def print_mid_run_crossings(
    stats: np.ndarray, steps: np.ndarray, onset: np.ndarray, kinds: list[str], threshold: float, headline: str
) -> np.ndarray:
    """Print per kind the mid-run faulty runs whose statistic goes over ``threshold`` at or after onset; return
    (R,) which runs do."""
    after = (steps >= onset[:, None]) & (steps > 0)
    crossed = np.fmax.reduce(np.where(after, stats, np.nan), axis=1) > threshold
    mid_run = np.array([k.startswith("fault") for k in kinds]) & (onset > 1) & (onset < NEVER)
    hits = Counter(k for k, hit, m in zip(kinds, crossed, mid_run) if hit and m)
    print_counts([k for k, m in zip(kinds, mid_run) if m], hits, headline)
    return crossed & mid_run


def rule_firings(
    runs: pl.DataFrame, features: pl.DataFrame, ids: list[str], kinds: list[str], column: str,
    new_state: Callable[[], object], what: str, noun: str,
) -> float:
    """Replay a one-column rule (``column`` of the features, ``new_state()``'s ``advance(value, step)``) over every
    run, print each run first flagged before its fault's onset and, per kind, the runs that carry the column (``what``:
    "say how many completions went unscored") and the runs flagged before and at or after onset; return the largest
    value a healthy record carries (``noun``: what the printed value is)."""
    onset = onsets(runs, kinds)
    frames = dict(features.filter(pl.col("run_id").is_in(ids)).sort("step").group_by(["run_id"]).__iter__())
    known, fired = Counter(), FirstFirings()
    healthy_largest = 0.0
    for r, run_id in enumerate(ids):
        frame = frames[(run_id,)]
        steps = frame["step"].to_numpy()
        value = frame[column].to_numpy().astype(float)  # (null: NaN, not known)
        known[kinds[r]] += bool(np.isfinite(value).any())
        healthy = (steps < onset[r]) & np.isfinite(value)
        if healthy.any():
            healthy_largest = max(healthy_largest, float(value[healthy].max()))
        state = new_state()
        units = np.array([state.advance(None if v != v else float(v), int(s)) for s, v in zip(steps, value)])
        where = np.flatnonzero(units > 1.0)
        if where.size and fired.add(kinds[r], int(steps[where[0]]), onset[r]):
            print(f"{run_id}: {noun} {value[where[0]]:g} at step {int(steps[where[0]])}, before any fault")
    fired.print(kinds, f"{sum(known.values())} of {len(ids)} runs {what}; flagged before any fault (healthy records)",
                known, what, "flagged", "flag")
    return healthy_largest
