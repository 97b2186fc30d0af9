"""``rftfm bench generate|stats|taxonomy|learning``: build and inspect RFT-FaultBench."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rftfm.cli.common import progress_columns

if TYPE_CHECKING:
    from rftfm.cli.main import Apps
    from rftfm.records import RunInfo

console = Console()


def bench_generate(
    out: Path = typer.Option(..., "--out", help="benchmark directory (created; re-running resumes)"),
    preset: str = typer.Option("mini", help="preset: mini, full, wide, classic or classic-mini"),
    executor: str = typer.Option("local", help="local (process pool) or ray"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (with --executor ray)"),
    workers: Optional[int] = typer.Option(None, help="local worker processes (default: one per core)"),
    limit: Optional[int] = typer.Option(None, help="generate at most this many pending runs"),
    shuffle: Optional[int] = typer.Option(
        None, help="train the runs in an order shuffled with this seed: any prefix (--limit) is a stratified sample"
    ),
) -> None:
    """Train every run of a preset (skipping finished ones) and write the published layout."""
    from rftfm.bench.generate import generate, pending_runs

    runs = _ordered_runs(preset, shuffle)
    todo = pending_runs(out, runs)
    if limit is not None:
        todo = todo[:limit]
    console.print(
        f"[bold]{preset}[/] preset: {len(runs)} runs, {len(runs) - len(pending_runs(out, runs))} already finished, "
        f"{len(todo)} to do"
    )
    start = time.perf_counter()
    with Progress(*progress_columns(), console=console) as progress:
        task = progress.add_task("training runs", total=len(todo))
        summaries = generate(
            out, todo, executor=executor, workers=workers, address=address, on_done=lambda s: progress.advance(task)
        )
    elapsed = time.perf_counter() - start
    steps = sum(s.steps for s in summaries)
    console.print(
        f"generated {len(summaries)} runs, {steps} steps, {sum(s.trajectories for s in summaries)} trajectories "
        f"in {elapsed:.1f} s"
    )


def _ordered_runs(preset: str, shuffle: int | None) -> list[RunInfo]:
    """The preset's runs in generation order: as listed, or shuffled with the seed ``shuffle``."""
    from rftfm.bench.presets import preset_runs

    runs = preset_runs(preset)
    if shuffle is not None:
        random.Random(shuffle).shuffle(runs)
    return runs


def bench_list(
    preset: str = typer.Option("mini", help="preset: mini, full, wide, classic or classic-mini"),
    shuffle: Optional[int] = typer.Option(None, help="the order of `generate --shuffle` with this seed"),
    skip: int = typer.Option(0, help="leave out the first this many runs of that order"),
    limit: Optional[int] = typer.Option(None, help="at most this many runs"),
) -> None:
    """Print the run ids of a preset in generation order, one per line: e.g. the runs a `generate --limit N` left
    for later (`--skip N`), as the test side of `--split listed:FILE`."""
    runs = _ordered_runs(preset, shuffle)[skip:]
    for run in runs[:limit] if limit is not None else runs:
        typer.echo(run.run_id)


def bench_stats(
    root: Path = typer.Argument(..., help="benchmark directory"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the statistics as JSON"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="also write a markdown page (docs)"),
) -> None:
    """Counts of runs, step records and trajectory records by family, type and setting."""
    from rftfm.bench.stats import benchmark_stats, generation_log, stats_markdown

    stats = benchmark_stats(root)
    totals = stats["totals"]
    console.print(f"[bold]{root}[/]: {totals['runs']} runs, {totals['steps']} step records, "
                  f"{totals['trajectories']} trajectory records"
                  + (f", {stats['configurations']} configurations" if stats.get("configurations") else ""))
    for title, key, cols in (
        ("by kind", "by_kind", ["control_or_fault"]),
        ("by family and setting", "by_family_setting", ["control_or_fault", "fault_family", "fault_strength"]),
        ("by type and setting", "by_type_setting", ["control_or_fault", "fault_type", "fault_strength"]),
        ("published and wild fault types", "by_origin", ["origin", "fault_strength"]),
        ("by task group and model", "by_task_size", ["task_group", "model_family", "model_size"]),
        *[(f"coverage: {axis}", ("coverage", axis), [axis]) for axis in stats["coverage"]],
        ("by onset", "by_onset", ["control_or_fault", "onset"]),
    ):
        rows = stats[key[0]][key[1]] if isinstance(key, tuple) else stats[key]
        if not rows:
            continue
        table = Table(title=title)
        for col in [c for c in cols if c in rows[0]] + ["runs", "steps", "trajectories"]:
            table.add_column(col, justify="right" if col in ("runs", "steps", "trajectories") else "left")
        for row in rows:
            table.add_row(
                *[str(row.get(c)) for c in [c for c in cols if c in rows[0]] + ["runs", "steps", "trajectories"]]
            )
        console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(stats, indent=1, default=str), encoding="utf-8")
        console.print(f"wrote {json_out}")
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(stats_markdown(stats, generation_log(root)), encoding="utf-8")
        console.print(f"wrote {markdown}")


def bench_taxonomy(
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the table to this file"),
) -> None:
    """Print the fault taxonomy registry (families, types, strengths, fingerprints)."""
    from rftfm.faults.taxonomy import taxonomy_markdown

    text = taxonomy_markdown()
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")
        console.print(f"wrote {markdown}")
    else:
        console.print(text)


def bench_learning(
    root: Path = typer.Argument(..., help="benchmark directory"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="also write a markdown page (docs)"),
) -> None:
    """Eval accuracy at the start vs the end of the normal runs: does a clean run learn?"""
    from rftfm.bench.learning import learning_markdown, learning_table

    text = learning_markdown(learning_table(root), str(root))
    console.print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")


def register(apps: "Apps") -> None:
    """``rftfm bench generate|stats|taxonomy|learning``."""
    apps.bench.command("generate")(bench_generate)
    apps.bench.command("list")(bench_list)
    apps.bench.command("stats")(bench_stats)
    apps.bench.command("taxonomy")(bench_taxonomy)
    apps.bench.command("learning")(bench_learning)
