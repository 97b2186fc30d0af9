"""Loader throughput: trajectory records per second loading a benchmark directory.

Prints our loader (per-run Parquet copies, polars) against a baseline run in the same
process: parsing the published JSONL trajectory files line by line with the json module.
Target: >= 500k trajectory records/s on the full preset.

    python benchmarks/bench_loader.py /work/data/full [--baseline-runs 60]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rftfm.io.faultbench import TRAJ_FILE
from rftfm.io.loader import load_benchmark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--baseline-runs", type=int, default=60, help="runs parsed by the JSONL baseline (it is slow)")
    args = parser.parse_args()

    start = time.perf_counter()
    bench = load_benchmark(args.root)
    ours_s = time.perf_counter() - start
    n = bench.trajectories.height
    ours_rate = n / ours_s

    files = sorted(args.root.glob(f"*/*/*/{TRAJ_FILE}"))[: args.baseline_runs]
    start, m = time.perf_counter(), 0
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                json.loads(line)
                m += 1
    base_s = time.perf_counter() - start
    base_rate = m / base_s if base_s else float("nan")

    print(f"runs {bench.runs.height}  steps {bench.steps.height}  trajectories {n}")
    print(f"rftfm loader (parquet copy, polars): {ours_s:.2f} s  -> {ours_rate:,.0f} trajectory records/s")
    print(f"baseline json.loads per JSONL line ({len(files)} runs, {m} records): {base_rate:,.0f} records/s")
    print(
        f"ratio ours / baseline: {ours_rate / base_rate:.1f}x   "
        f"target >= 500,000/s: {'met' if ours_rate >= 5e5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
