"""Do clean runs learn inside the size-scaled learning-rate ranges, and outside them?

Reads a generated benchmark's normal runs and prints the held-out accuracy rise (mean of the last three
evaluations minus the first three) of the runs inside and outside ``config_space.SIZE_LR_SCALE`` x
``LR_RANGE``, overall and per task group. This is the analysis that set the scaled ranges (on a first
full generation that drew one range for every size).

    python benchmarks/learning_by_lr.py /work/data/full2-aborted-lr
"""

from __future__ import annotations

import sys

import polars as pl

from rftfm.bench.config_space import LR_RANGE, SIZE_LR_SCALE
from rftfm.io.loader import load_benchmark


def main(root: str) -> None:
    bench = load_benchmark(root, trajectories=False)
    runs = bench.runs.filter(pl.col("control_or_fault") == "normal")
    steps = bench.steps.join(runs.select("run_id"), on="run_id").filter(pl.col("eval_accuracy").is_not_null())
    per_run = steps.sort("step").group_by("run_id").agg(
        pl.col("eval_accuracy").head(3).mean().alias("start"), pl.col("eval_accuracy").tail(3).mean().alias("end"))
    scale = pl.col("model_size").replace_strict(SIZE_LR_SCALE, return_dtype=pl.Float64)
    table = per_run.join(runs, on="run_id").with_columns(
        (pl.col("end") - pl.col("start")).alias("rise"),
        (pl.col("learning_rate") <= LR_RANGE[1] * scale).alias("inside_scaled_range"))

    def summary(keys: list[str]) -> pl.DataFrame:
        return table.group_by(keys).agg(pl.len().alias("runs"), pl.col("rise").mean(),
                                        (pl.col("rise") > 0).mean().alias("share_rising")).sort(keys)

    with pl.Config(tbl_rows=100, tbl_cols=10):
        print(summary(["inside_scaled_range"]))
        print(summary(["inside_scaled_range", "task_group"]))
        print(summary(["inside_scaled_range", "model_size"]))


if __name__ == "__main__":
    main(sys.argv[1])
