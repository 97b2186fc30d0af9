"""The evidence behind the detector's stall signal (docs/detection.md), on the seed split's train side.

For the arithmetic runs of the train side: the share of post-onset steps (12-28) whose eval
accuracy repeats the previous step's exactly, for lr_low runs with onset 10 (easy and hard)
and for normal / control runs.

    python scripts/stall_evidence.py --data /work/data/full
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from rftfm.bench.splits import split_runs
from rftfm.io.loader import load_benchmark


def repeat_share(accuracy: np.ndarray) -> float:
    """Share of steps whose (finite) accuracy equals the previous step's."""
    diffs = np.diff(accuracy)
    diffs = diffs[np.isfinite(diffs)]
    return float((diffs == 0).mean()) if diffs.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    bench = load_benchmark(args.data, trajectories=False)
    train, _ = split_runs(bench.runs, "seed")
    arith = train.filter(pl.col("task_group").str.starts_with("arith"))
    groups = {
        "lr_low easy": arith.filter(
            (pl.col("fault_type") == "lr_low") & (pl.col("onset_step") == 10) & (pl.col("fault_strength") == "easy")
        ),
        "lr_low hard": arith.filter(
            (pl.col("fault_type") == "lr_low") & (pl.col("onset_step") == 10) & (pl.col("fault_strength") == "hard")
        ),
        "normal": arith.filter(pl.col("control_or_fault").is_in(["normal", "control"])),
    }
    steps = bench.steps.filter(pl.col("step") >= 11).sort("run_id", "step")
    by_run = {rid: frame["eval_accuracy"].cast(pl.Float64).to_numpy() for (rid,), frame in steps.group_by("run_id")}
    for label, runs in groups.items():
        shares = np.array([repeat_share(by_run[r]) for r in runs["run_id"].to_list() if r in by_run])
        print(
            f"{label:12s} runs {shares.size:3d}  repeated steps: median {np.nanmedian(shares):.2f}, "
            f"min {np.nanmin(shares):.2f}, max {np.nanmax(shares):.2f}"
        )


if __name__ == "__main__":
    main()
