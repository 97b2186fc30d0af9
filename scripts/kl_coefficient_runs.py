"""How far the KL-coefficient rule (:mod:`rftfm.fm.kl_coefficient`) goes on healthy records, per loss type, and which
faulty runs it alarms after a mid-run onset: the check behind its limits, docs/detection.md, method 3 (m).

    python scripts/kl_coefficient_runs.py --data /work/data/h31 [--development] [--configured]

``--development``: only the runs of the development folds (task groups arith_b, repeat and tool, and runs that log
every few steps), on which the limits were chosen. ``--configured``: judged as inside the trainer, against each run's
configured coefficient (its ``beta``, loss type and length limit: :class:`rftfm.fm.kl_coefficient.Configured`).
The faulty runs it alarms at or after an onset at step 1 are printed too. Healthy records: every record of normal and
control runs, and faulty runs' records before onset. The rule's units are signed (positive: the coefficient rose);
their size is printed.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import polars as pl
from benchmark_runs import healthy_peaks, load_runs, onsets, print_healthy_peaks, print_mid_run_crossings

from rftfm.fm import kl_coefficient
from rftfm.fm.cube import runs_cube

DEVELOPMENT_TASKS = ("arith_b", "repeat", "tool")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--development", action="store_true", help="only the development folds' runs")
    parser.add_argument("--configured", action="store_true", help="against each run's configured coefficient")
    runs, features, ids, kinds = load_runs(__doc__, parser)
    args = parser.parse_args()
    if args.development:
        keep = (runs["task_group"].is_in(DEVELOPMENT_TASKS) | (runs["logging_steps"] > 1)).to_numpy()
        runs = runs.filter(pl.Series(keep))
        ids, kinds = [i for i, k in zip(ids, keep) if k], [k for k, m in zip(kinds, keep) if m]
    raw, steps = runs_cube(features, ids)
    configured = None
    if args.configured:
        configured = [kl_coefficient.Configured.of_config(r) for r in runs.iter_rows(named=True)]
    units = np.abs(kl_coefficient.cube_units(raw, steps, configured))
    onset = onsets(runs, kinds)
    peak = healthy_peaks(units, steps, onset)
    loss_types = np.array(runs["loss_type"].to_list())
    print(f"{len(ids)} runs; an alarm above 1 unit")
    print_healthy_peaks(peak, ids, loss_types, "units", lambda v: f"{v:.3f}", limit=1.0)
    print_mid_run_crossings(units, steps, onset, kinds, 1.0, "mid-run faulty runs it alarms at or after onset")
    after = (steps >= onset[:, None]) & (steps > 0)
    crossed = np.fmax.reduce(np.where(after, units, np.nan), axis=1) > 1.0
    at_start = Counter(k for k, hit, o in zip(kinds, crossed, onset) if hit and o == 1)
    print("faulty runs with an onset at step 1 it alarms:", dict(sorted(at_start.items())))


if __name__ == "__main__":
    main()
