"""What the length faults leave in the log: the truncated ratio after onset, per type and strength.

    python scripts/length_fault_truncation.py --data /work/data/h31

For every faulty run whose type's fingerprint leads with the truncated ratio going up (the registry's length
limits), the logged ratio over the steps from onset on: the median over runs of each run's median, and the lowest
value any run reaches. Says whether the log can tell one length limit from another.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.io.loader import load_benchmark

LENGTH_LIMITS = [t for t, f in FAULT_TYPES.items() if f.signals and f.signals[0] == ("truncated_ratio", "up")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    args = parser.parse_args()
    bench = load_benchmark(args.data, trajectories=False)
    runs = bench.runs.filter(pl.col("fault_type").is_in(LENGTH_LIMITS) & (pl.col("control_or_fault") == "fault"))
    after = (
        bench.steps.join(runs.select("run_id", "fault_type", "fault_strength", "onset_step"), on="run_id")
        .filter(pl.col("step") >= pl.col("onset_step"))
        .group_by("run_id", "fault_type", "fault_strength")
        .agg(pl.col("truncated_ratio").median().alias("run_median"), pl.col("truncated_ratio").min().alias("run_min"))
    )
    table = (
        after.group_by("fault_type", "fault_strength")
        .agg(pl.len().alias("runs"), pl.col("run_median").median().alias("median_of_run_medians"),
             pl.col("run_min").min().alias("lowest"))
        .sort("fault_type", "fault_strength")
    )
    print("| type | strength | runs | median of run medians | lowest |")
    print("|---|---|---|---|---|")
    for row in table.iter_rows(named=True):
        print(f"| {row['fault_type']} | {row['fault_strength']} | {row['runs']} | "
              f"{row['median_of_run_medians']:.3f} | {row['lowest']:.3f} |")


if __name__ == "__main__":
    main()
