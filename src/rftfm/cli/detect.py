"""CLI: ``rftfm fit detector`` and ``rftfm bench evaluate detection``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from rftfm.cli.main import Apps

console = Console()


def fit_detector(
    data: Path = typer.Option(..., "--data", help="benchmark directory (ours or the published layout)"),
    out: Path = typer.Option(..., "--out", help="artifact to write (JSON, loads without pickle)"),
    split: str = typer.Option("seed", help="fit on the train side of this split (seed|task|size), or 'all'"),
) -> None:
    """Fit the RFT-FM detector on the normal and control runs of a benchmark's train split."""
    import polars as pl

    from rftfm.bench.splits import split_runs
    from rftfm.fm.detect import Detector
    from rftfm.fm.features import features_frame
    from rftfm.io.loader import load_benchmark

    bench = load_benchmark(data)
    features = features_frame(bench.steps, bench.trajectories)
    runs = bench.runs if split == "all" else split_runs(bench.runs, split)[0]
    detector = Detector().fit(runs.filter(pl.col("control_or_fault").is_in(("normal", "control"))), features)
    detector.save(out)
    thresholds = ", ".join(f"{k} {c.threshold:.3f}" for k, c in detector.calibration.items())
    console.print(
        f"fitted on {detector.fit_info['normal_runs']} normal runs "
        f"({len(detector.profiles) - 1} configuration profiles); "
        f"thresholds: {thresholds}"
    )
    console.print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def evaluate_detection_cmd(
    data: Path = typer.Option(..., "--data", help="benchmark directory (ours or the published layout)"),
    split: str = typer.Option("seed", help="held-out seed|task|size, or all (every run, with --detector)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full results as JSON"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the tables as Markdown"),
    baselines: Optional[str] = typer.Option(None, help="comma-separated subset of baselines (default: all)"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="evaluate RFT-FM only"),
    detector: Optional[Path] = typer.Option(
        None, help="evaluate this fitted artifact instead of fitting on the train split"
    ),
) -> None:
    """Run-level P/R/F1 (protocols A and B), false alarms and delay for RFT-FM and the baselines."""
    from rftfm.bench.eval_detection import evaluate_detection, to_markdown
    from rftfm.fm.detect import Detector

    with console.status("evaluating") as status:
        result = evaluate_detection(
            data,
            split,
            baselines=baselines.split(",") if baselines else None,
            with_baselines=not no_baselines,
            detector=Detector.load(detector) if detector else None,
            on_method=lambda name: status.update(f"fitting and scoring {name}"),
        )
    table = Table(title=f"detection, held-out {split} ({result['test_runs']} test runs: {result['test_by_kind']})")
    for col in (
        "method",
        "F1 easy B",
        "F1 hard B",
        "F1 easy A",
        "F1 hard A",
        "normal alarmed %",
        "FA/1000 steps",
        "median delay",
        "p90 delay",
    ):
        table.add_column(col, justify="left" if col == "method" else "right")
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for name, m in result["methods"].items():
        b, a, fa, d = m["protocols"]["B"]["avg_f1"], m["protocols"]["A"]["avg_f1"], m["false_alarms"], m["delay"]["all"]
        table.add_row(
            name,
            fmt(b["easy"]),
            fmt(b["hard"]),
            fmt(a["easy"]),
            fmt(a["hard"]),
            fmt(fa["pct_normal_runs_alarmed"]),
            fmt(fa["per_1000_normal_steps"], 2),
            fmt(d["median"]),
            fmt(d["p90"]),
        )
    console.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
        console.print(f"wrote {json_out}")
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(to_markdown(result), encoding="utf-8")
        console.print(f"wrote {markdown}")


def detection_targets_cmd(
    seed_json: Path = typer.Option(..., "--seed", help="JSON of `bench evaluate detection --split seed`"),
    task_json: Optional[Path] = typer.Option(None, "--task", help="JSON of `--split task`"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the table as Markdown"),
) -> None:
    """Where the detection targets stand, from saved evaluation results."""
    from rftfm.bench.eval_detection import targets_markdown

    by_split = {"seed": json.loads(seed_json.read_text(encoding="utf-8"))}
    if task_json:
        by_split["task"] = json.loads(task_json.read_text(encoding="utf-8"))
    text = targets_markdown(by_split)
    console.print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")


def register(apps: "Apps") -> None:
    """``rftfm fit detector``, ``rftfm bench evaluate detection|detection-targets``."""
    apps.fit.command("detector")(fit_detector)
    apps.evaluate.command("detection")(evaluate_detection_cmd)
    apps.evaluate.command("detection-targets")(detection_targets_cmd)
