"""What the run-counting scripts share (scripts/non_finite_runs.py, scripts/reward_identity_runs.py): a benchmark
loaded from ``--data``, each run's kind (``normal``, ``control``, ``fault <type>``), and the per-kind count they print.
"""

from __future__ import annotations

import argparse
from collections import Counter

import polars as pl

from rftfm.bench.eval_detection import _load


def load_runs(doc: str) -> tuple[pl.DataFrame, pl.DataFrame, list[str], list[str]]:
    """The benchmark ``--data`` names on the command line (``doc``: the script's help): its runs table, features,
    run ids and each run's kind."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
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
