"""Does a clean run really learn? Eval accuracy at the start vs the end of un-injected runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from rftfm.io.loader import load_benchmark

EDGE_STEPS = 3  # average the first / last three evaluated steps (eval is noisy on 128 prompts)


def learning_table(root: str | Path) -> list[dict[str, Any]]:
    """Per (task group, model family, model size): mean eval accuracy over the first and last evaluated
    steps of clean runs (normal runs and un-injected control runs)."""
    bench = load_benchmark(root, trajectories=False)
    runs = bench.runs
    if "model_family" not in runs.columns:
        runs = runs.with_columns(pl.lit(None, dtype=pl.String).alias("model_family"))
    runs = runs.with_columns(pl.col("model_family").fill_null("gpt2"))
    keys = ["task_group", "model_family", "model_size"]
    normal = runs.filter(pl.col("control_or_fault").is_in(["normal", "control"])).select("run_id", *keys)
    steps = bench.steps.join(normal, on="run_id").filter(pl.col("eval_accuracy").is_not_null())
    per_run = steps.sort("step").group_by("run_id", *keys).agg(
        pl.col("eval_accuracy").head(EDGE_STEPS).mean().alias("start"),
        pl.col("eval_accuracy").tail(EDGE_STEPS).mean().alias("end"),
        pl.col("step").max().alias("steps"),
    )
    table = (
        per_run.group_by(*keys)
        .agg(
            pl.len().alias("runs"),
            pl.col("steps").max(),
            pl.col("start").mean(),
            pl.col("end").mean(),
            (pl.col("end") - pl.col("start")).mean().alias("rise"),
            (pl.col("end") > pl.col("start")).mean().alias("share_rising"),
        )
        .sort(*keys)
    )
    return table.to_dicts()


def learning_markdown(rows: list[dict[str, Any]], root: str) -> str:
    lines = [
        "# Clean runs learn: eval accuracy at the start and end of un-injected runs",
        "",
        f"Written by `rftfm bench learning {root} --markdown <this file>`. Eval accuracy = strict-verifier",
        "accuracy of the greedy policy on the task group's fixed 128 held-out prompts (every logged step, or about",
        f"40 times in long runs); start / end = mean over the first / last {EDGE_STEPS} evaluations of each clean run",
        "(normal and control runs), averaged over runs; steps = the longest run.",
        "",
        "| task group | model family | model size | runs | steps | start | end | rise | runs rising |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task_group']} | {r['model_family']} | {r['model_size']} | {r['runs']} | {r['steps']} "
            f"| {r['start']:.3f} | {r['end']:.3f} "
            f"| {r['rise']:+.3f} | {100 * r['share_rising']:.0f} % |"
        )
    return "\n".join(lines) + "\n"
