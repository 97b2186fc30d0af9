"""Do the advantage-consistency signals hold in healthy runs and break under advantage bugs?

For every logged step of a benchmark (the detector's view: ``rftfm.fm.features.features_frame``), the two
invariants of group-relative estimators (``traj_advantage_residual``, ``traj_advantage_zeroed``; see
``rftfm.fm.features.advantage_consistency``) by kind of run: normal and control runs, pre-onset steps of faulty
runs, and each fault type while it acts. A record *breaks* an invariant when its residual exceeds ``--tolerance``
or a group's advantages were all zero despite a reward spread. Then the same as the live loop reads them, per
logged record.

    python scripts/advantage_invariants.py --data /work/data/half --markdown docs/results/advantage-invariants.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from rftfm.fm.features import advantage_consistency, features_frame, groups_per_rollout_step
from rftfm.fm.invariants import INVARIANT_LIMITS
from rftfm.io.loader import load_benchmark

SIGNALS = ("traj_advantage_residual", "traj_advantage_zeroed")


def invariants_table(data: Path, tolerance: float) -> pl.DataFrame:
    bench = load_benchmark(data)
    frame = features_frame(bench.steps, bench.trajectories).join(
        bench.runs.select("run_id", "control_or_fault", "fault_type"), on="run_id", how="left"
    )
    active = pl.col("fault_active").fill_null(False) if "fault_active" in frame.columns else pl.lit(False)
    kind = (
        pl.when(pl.col("control_or_fault") != "fault")
        .then(pl.lit("healthy (normal + control)"))
        .when(active)
        .then(pl.col("fault_type"))
        .otherwise(pl.lit("faulty runs before onset"))
    )
    breaks = (pl.col("traj_advantage_residual").fill_null(0.0) > tolerance) | (
        pl.col("traj_advantage_zeroed").fill_null(0.0) > 0
    )
    judged = pl.col("traj_advantage_residual").is_not_null() | pl.col("traj_advantage_zeroed").is_not_null()
    return (
        frame.with_columns(kind.alias("records of"), breaks.alias("breaks"))
        .filter(judged)
        .group_by("records of")
        .agg(
            pl.col("run_id").n_unique().alias("runs"),
            pl.len().alias("step records"),
            pl.col("traj_advantage_residual").max().alias("max residual"),
            pl.col("traj_advantage_zeroed").max().alias("max zeroed"),
            (pl.col("breaks").mean() * 100).round(1).alias("records breaking %"),
            pl.col("run_id").filter(pl.col("breaks")).n_unique().alias("runs breaking"),
        )
        .sort("records of")
    )


def live_records(data: Path, limit: float) -> tuple[int, float, int, int]:
    """As the loop sees them: each logged record of the healthy runs and of faulty runs before their onset, with
    the trajectories generated since the previous logged step (several rollout steps when a run logs every few
    steps). Returns (records, worst invariant value, records over ``limit``, those with group ids alone)."""
    bench = load_benchmark(data)
    onsets = dict(bench.runs.filter(pl.col("control_or_fault") == "fault").select("run_id", "onset_step").iter_rows())
    logged = bench.steps.select("run_id", "step").sort("run_id", "step")
    records, worst, over, over_ids_only = 0, 0.0, 0, 0
    for (run_id,), steps in logged.group_by(["run_id"], maintain_order=True):
        trajectories = bench.trajectories.filter(pl.col("run_id") == run_id)
        previous = 0
        for step in steps["step"].to_list():
            if run_id in onsets and step >= onsets[run_id]:
                break
            window = trajectories.filter(pl.col("rollout_step").is_between(previous + 1, step))
            previous = step
            if window.height == 0:
                continue
            cols = [window[c].cast(pl.Float64).fill_null(np.nan).to_numpy()
                    for c in ("rollout_step", "group_id", "reward", "advantage")]
            value = _worst(advantage_consistency(groups_per_rollout_step(cols[0], cols[1]), cols[2], cols[3]))
            records += value is not None
            worst = max(worst, value or 0.0)
            over += (value or 0.0) > limit
            over_ids_only += (_worst(advantage_consistency(cols[1], cols[2], cols[3])) or 0.0) > limit
    return records, worst, over, over_ids_only


def _worst(pair: tuple[float | None, float | None]) -> float | None:
    values = [v for v in pair if v is not None]
    return max(values) if values else None


def markdown(table: pl.DataFrame, command: str, tolerance: float) -> str:
    lines = [
        "# Advantage-consistency invariants by kind of record",
        "",
        f"Written by `{command}`.",
        "",
        "Step records whose trajectories let the invariants be judged (some group's rewards spread); a record",
        f"breaks them when the residual exceeds {tolerance:g} or a group's advantages were all zero despite a",
        "reward spread.",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    for row in table.iter_rows():
        cells = [f"{v:.2e}" if isinstance(v, float) and name.startswith("max") else str(v)
                 for v, name in zip(row, table.columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    table = invariants_table(args.data, args.tolerance)
    command = f"python scripts/advantage_invariants.py --data {args.data}" + (
        f" --markdown {args.markdown}" if args.markdown else ""
    )
    text = markdown(table, command, args.tolerance)
    limit = INVARIANT_LIMITS["traj_advantage_residual"]
    records, worst, over, ids_only = live_records(args.data, limit)
    text += (
        f"\nAs the loop sees them (each logged record of the healthy runs and of faulty runs before their onset, with "
        f"the trajectories generated since the previous logged step): {records} records, worst value {worst:.2e}, "
        f"{over} over the detector's limit {limit:g}. Keyed by group id alone, as the live features were before "
        f"they told rollout steps apart, {ids_only} of them broke it (records pooling several rollout steps).\n"
    )
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
