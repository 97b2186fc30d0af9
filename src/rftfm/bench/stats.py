"""Counts of runs, step records and trajectory records, by family, type, setting and kind, and the
configuration coverage (runs per task group, model family, size, schedule, KL regime, run length)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from rftfm.io.loader import load_benchmark


def benchmark_stats(root: str | Path) -> dict[str, Any]:
    bench = load_benchmark(root)
    runs = bench.runs.with_columns(
        pl.col("fault_family").fill_null("-"),
        pl.col("fault_type").fill_null("-"),
        pl.col("fault_strength").fill_null("-"),
    )
    step_counts = bench.steps.group_by("run_id").len("steps") if bench.steps.height else pl.DataFrame({"run_id": [], "steps": []})
    traj = bench.trajectories
    traj_counts = traj.group_by("run_id").len("trajectories") if traj is not None and traj.height else None
    table = runs.join(step_counts, on="run_id", how="left")
    table = table.join(traj_counts, on="run_id", how="left") if traj_counts is not None else table.with_columns(pl.lit(0).alias("trajectories"))
    table = table.with_columns(pl.col("steps").fill_null(0), pl.col("trajectories").fill_null(0))

    def grouped(keys: list[str]) -> list[dict[str, Any]]:
        return (
            table.group_by(keys)
            .agg(pl.len().alias("runs"), pl.col("steps").sum(), pl.col("trajectories").sum())
            .sort(keys)
            .to_dicts()
        )

    onset_col = "onset_step" if "onset_step" in table.columns else None
    table = table.with_columns(*_coverage_columns(table))
    return {
        "root": str(root),
        "totals": {"runs": table.height, "steps": int(table["steps"].sum()), "trajectories": int(table["trajectories"].sum())},
        "by_kind": grouped(["control_or_fault"]),
        "by_family_setting": grouped(["control_or_fault", "fault_family", "fault_strength"]),
        "by_type_setting": grouped(["control_or_fault", "fault_type", "fault_strength"]),
        "by_task_size": grouped([c for c in ("task_group", "model_family", "model_size") if c in table.columns]),
        "by_onset": grouped(["control_or_fault", "onset"]) if onset_col else [],
        "by_origin": grouped(["origin", "fault_strength"]),
        "coverage": {axis: grouped([axis]) for axis in COVERAGE_AXES},
        "configurations": table["config_id"].n_unique() if "config_id" in table.columns else None,
        "loader": {"malformed_lines": bench.report.malformed_lines, "files_read": bench.report.files_read},
        "commit_span_s": _commit_span(Path(root)),
    }


#: configuration axes the coverage counts runs by (derived columns: beta regime, run-length bucket)
COVERAGE_AXES = ("task_group", "model_family", "model_size", "lr_scheduler", "beta_regime", "length_bucket",
                 "logging_steps", "loss_type")
LENGTH_BUCKETS = ((30, "<=30"), (60, "31-60"), (120, "61-120"))


def _coverage_columns(table: pl.DataFrame) -> list[pl.Expr]:
    """Derived coverage columns; axes a table lacks (published data, older runs) count as missing."""
    def col(name: str) -> pl.Expr:
        return pl.col(name) if name in table.columns else pl.lit(None)

    bucket = pl.when(col("num_steps").is_null()).then(pl.lit(None, dtype=pl.String))
    for limit, label in LENGTH_BUCKETS:
        bucket = bucket.when(col("num_steps") <= limit).then(pl.lit(label))
    from rftfm.faults.taxonomy import WILD_TYPES

    return [
        pl.when(col("beta").is_null()).then(pl.lit(None, dtype=pl.String))
        .when(col("beta") == 0).then(pl.lit("beta=0")).otherwise(pl.lit("beta>0")).alias("beta_regime"),
        bucket.otherwise(pl.lit(">120")).alias("length_bucket"),
        pl.when(pl.col("fault_type").is_in(list(WILD_TYPES))).then(pl.lit("wild"))
        .when(pl.col("fault_type") == "-").then(pl.lit("-")).otherwise(pl.lit("published")).alias("origin"),
        _onset_bucket(col("onset_step"), col("num_steps")).alias("onset"),
        *[col(c).alias(c) for c in COVERAGE_AXES
          if c not in ("beta_regime", "length_bucket") and c not in table.columns],
    ]


def _onset_bucket(onset: pl.Expr, steps: pl.Expr) -> pl.Expr:
    """``step 1``, or the mid-run onset's position in its run, in tenths (``mid 30-40 %``)."""
    tenth = (10 * (onset - 1) / steps).floor().cast(pl.Int64) * 10
    mid = pl.concat_str(pl.lit("mid "), tenth.cast(pl.String), pl.lit("-"), (tenth + 10).cast(pl.String), pl.lit(" %"))
    return (pl.when(onset.is_null()).then(pl.lit(None, dtype=pl.String))
            .when(onset <= 1).then(pl.lit("step 1")).otherwise(mid))


def _commit_span(root: Path) -> float | None:
    """Seconds between the first and the last committed run of ``root`` (None without runs)."""
    times = [p.stat().st_mtime for p in root.glob("*/*/run_info.json") if not p.parent.name.startswith(".tmp-")]
    return max(times) - min(times) if len(times) > 1 else None


def stats_markdown(stats: dict[str, Any], generation_log: list[dict[str, Any]] | None = None) -> str:
    """The statistics (and the measured generation wall time) as a markdown page."""
    totals = stats["totals"]
    lines = [
        "# RFT-FaultBench statistics",
        "",
        f"Written by `rftfm bench stats {stats['root']} --markdown <this file>`.",
        "",
        f"**{totals['runs']} runs, {totals['steps']} step records, {totals['trajectories']} trajectory records.**",
        "",
    ]
    if generation_log:
        wall = sum(e["wall_s"] for e in generation_log)
        runs = sum(e["runs"] for e in generation_log)
        cpus = {e.get("cpus") for e in generation_log}
        lines += [
            f"Generation wall time (sum over {len(generation_log)} invocation(s) of `rftfm bench generate`, "
            f"from `metadata/generation_log.jsonl`): **{wall / 60:.1f} min** for {runs} runs on "
            f"{', '.join(str(c) for c in sorted(cpus, key=str))} CPU core(s).",
            "",
        ]
    span = stats.get("commit_span_s")
    if span:
        lines += [
            f"Span from the first to the last committed run (modification times of the runs' `run_info.json`, "
            f"which covers every invocation, including interrupted ones): **{span / 60:.1f} min**.",
            "",
        ]
    if stats.get("configurations"):
        lines += [f"**{stats['configurations']} distinct training configurations.**", ""]
    sections = [("By kind", stats["by_kind"]), ("By family and setting", stats["by_family_setting"]),
                ("By type and setting", stats["by_type_setting"]),
                ("Published and wild fault types", stats["by_origin"]),
                ("By task group and model size", stats["by_task_size"])]
    sections += [(f"Coverage: {axis.replace('_', ' ')}", rows) for axis, rows in stats["coverage"].items()]
    sections += [("By onset step", stats["by_onset"])]
    for title, rows in sections:
        if not rows:
            continue
        cols = list(rows[0])
        lines += [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def generation_log(root: str | Path) -> list[dict[str, Any]]:
    import json

    path = Path(root) / "metadata" / "generation_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
