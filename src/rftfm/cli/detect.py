"""CLI: ``rftfm fit detector`` and ``rftfm bench evaluate detection``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from rftfm.cli.common import command_line, fail

if TYPE_CHECKING:
    from rftfm.cli.main import Apps

console = Console()


def fit_detector(
    data: Path = typer.Option(..., "--data", help="benchmark directory (ours or the published layout)"),
    out: Path = typer.Option(..., "--out", help="artifact to write (JSON, loads without pickle)"),
    split: str = typer.Option("all", help="fit on the train side of this split (seed|task|size|config), or 'all'"),
    fold: Optional[str] = typer.Option(None, help="with --split config: the held-out folds (comma-separated)"),
    profile: bool = typer.Option(False, "--profile", help="fit the per-configuration detector on your own normal "
                                 "runs instead of the configuration-free one"),
    rounds: int = typer.Option(250, help="boosting rounds of each tier's model (configuration-free detector)"),
) -> None:
    """Fit a detector: the configuration-free one (needs faulty runs of many configurations), or with
    ``--profile`` the per-configuration one (needs only normal runs of your own setup)."""
    import polars as pl

    from rftfm.bench.eval_detection import config_groups
    from rftfm.bench.splits import held_out
    from rftfm.fm.detect import Detector, DetectorConfig
    from rftfm.fm.features import features_frame
    from rftfm.fm.profile_detect import ProfileDetector
    from rftfm.io.loader import load_benchmark

    bench = load_benchmark(data)
    features = features_frame(bench.steps, bench.trajectories)
    runs = bench.runs if split == "all" else held_out(bench.runs, split, fold)[0]
    if profile:
        detector = ProfileDetector().fit(runs.filter(pl.col("control_or_fault").is_in(("normal", "control"))), features)
        detector.save(out)
        console.print(f"fitted on {detector.fit_info['normal_runs']} normal runs "
                      f"({len(detector.profiles) - 1} configuration profiles)")
    else:
        with console.status("fitting the configuration-free detector (4 input tiers)"):
            zero_shot = Detector(DetectorConfig(num_rounds=rounds)).fit(runs, features, groups=config_groups(runs))
        zero_shot.save(out)
        info = zero_shot.fit_info
        console.print(f"fitted on {info['runs']} runs ({info['normal_runs']} normal or control) of "
                      f"{info['configurations']} configurations; thresholds (learned / surprise): "
                      + ", ".join(f"{k} {v['learned']:.3f} / {v['surprise']:.1f}"
                                  for k, v in zero_shot.thresholds.items()))
    console.print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def evaluate_detection_cmd(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="benchmark directory (ours or the published layout)"),
    split: str = typer.Option("config", help="config (held-out configurations, in folds), seed, task, size, "
                              "listed:FILE (the runs FILE lists are the test side), or all (every run, "
                              "with --detector)"),
    tiers: str = typer.Option("a,b,c,bc", help="input tiers: a step metrics, b + trajectories, c + accuracy"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full results as JSON"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the tables as Markdown"),
    baselines: Optional[str] = typer.Option(None, help="comma-separated subset of baselines (default: all)"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="evaluate RFT-FM only"),
    detector: Optional[Path] = typer.Option(None, help="evaluate this fitted artifact instead of fitting per fold"),
    workers: int = typer.Option(1, help="folds evaluated in parallel processes"),
    fold: Optional[str] = typer.Option(None, help="evaluate only these folds (comma-separated, e.g. task=digits)"),
    cache: Optional[Path] = typer.Option(None, help="keep each fold's outcomes here; a re-run resumes from them "
                                         "(delete it when the code changes)"),
    in_trainer: bool = typer.Option(False, "--in-trainer", help="also RFT-FM as the TRL callback runs it: the "
                                    "trainer's on-policy configuration and advantage invariants known"),
) -> None:
    """Run-level P/R/F1 (protocol B), false alarms and delay for RFT-FM and the baselines, per input tier."""
    from rftfm.bench.eval_detection import RFTFM, StaleCache, evaluate_detection, to_markdown
    from rftfm.fm.detect import Detector

    with console.status("evaluating") as status:
        try:
            result = evaluate_detection(
                data, split, tiers=tuple(t.strip() for t in tiers.split(",") if t.strip()),
                baselines=baselines.split(",") if baselines else None, with_baselines=not no_baselines,
                detector=Detector.load(detector) if detector else None,
                on_method=lambda name: status.update(f"fitting and scoring: {name}"), workers=workers, cache=cache,
                only=[f.strip() for f in fold.split(",") if f.strip()] if fold else None, in_trainer=in_trainer,
            )
        except StaleCache as exc:
            fail(str(exc))
    result["command"] = command_line(ctx)
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for tier in result["tiers"]:
        table = Table(title=f"detection, split {split}, tier {tier} ({result['runs_by_kind']})")
        for col in ("method", "F1 easy mid", "F1 hard mid", "F1 easy @1", "F1 hard @1", "normal alarmed %",
                    "FA/1000 steps", "median delay"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for name, m in result["methods"][tier].items():
            mid, one, fa = m["mid_run"]["B"]["avg_f1"], m["step1"]["B"]["avg_f1"], m["false_alarms"]
            table.add_row(name if name != RFTFM else f"[bold]{name}[/]", fmt(mid["easy"]), fmt(mid["hard"]),
                          fmt(one["easy"]), fmt(one["hard"]), fmt(fa["pct_normal_runs_alarmed"]),
                          fmt(fa["per_1000_normal_steps"], 2), fmt(m["delay"]["all"]["median"]))
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
    config_json: Path = typer.Option(..., "--config", help="JSON of `bench evaluate detection --split config`"),
    seed_json: Optional[Path] = typer.Option(None, "--seed", help="JSON of `--split seed`"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the table as Markdown"),
    data: Optional[Path] = typer.Option(
        None, "--data", help="the benchmark the results were run on (run groups, for results from before stop 43)"
    ),
) -> None:
    """Where the detection targets stand, from saved evaluation results, with 95 % intervals over resampled runs."""
    from rftfm.bench.eval_detection import targets_markdown

    seed = json.loads(seed_json.read_text(encoding="utf-8")) if seed_json else None
    text = targets_markdown(json.loads(config_json.read_text(encoding="utf-8")), seed, data)
    console.print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")


def register(apps: "Apps") -> None:
    """``rftfm fit detector``, ``rftfm bench evaluate detection|detection-targets``."""
    apps.fit.command("detector")(fit_detector)
    apps.evaluate.command("detection")(evaluate_detection_cmd)
    apps.evaluate.command("detection-targets")(detection_targets_cmd)
