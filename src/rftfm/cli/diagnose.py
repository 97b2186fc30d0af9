"""CLI for diagnosis: ``rftfm fit diagnoser``, ``rftfm bench evaluate diagnosis``, ``rftfm diagnose RUN_DIR``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from rftfm.cli.common import command_line, fail

if TYPE_CHECKING:
    from rftfm.cli.main import Apps

console = Console()


def _load_features(data: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    from rftfm.fm.features import features_frame
    from rftfm.io.loader import load_benchmark

    with console.status(f"loading {data}"):
        bench = load_benchmark(data)
        features = features_frame(bench.steps, bench.trajectories)
    return bench.runs, features


def fit_diagnoser(
    data: Path = typer.Option(..., "--data", help="benchmark directory"),
    out: Path = typer.Option(..., "--out", help="output JSON file (LightGBM model embedded as text)"),
    split: str = typer.Option(
        "all", help="train on the train side of this split (seed|task|size|config), or 'all' runs"
    ),
    fold: Optional[str] = typer.Option(None, help="with --split config: the held-out folds (comma-separated)"),
) -> None:
    """Train the Diagnoser (fault-type classifier over scale-free dynamics + abstention thresholds)."""
    from rftfm.bench.eval_detection import config_groups
    from rftfm.bench.splits import held_out
    from rftfm.fm.diagnose import Diagnoser

    runs, features = _load_features(data)
    train = runs if split == "all" else held_out(runs, split, fold)[0]
    with console.status(f"fitting on {train.height} runs"):
        diagnoser = Diagnoser().fit(train, features, groups=config_groups(train))
    path = diagnoser.save(out)
    console.print(f"diagnoser: {diagnoser.info} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


def evaluate_diagnosis(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="benchmark directory"),
    split: str = typer.Option(
        "config",
        help="config (held-out configurations, in folds) | seed | task | size | listed:FILE (the runs FILE "
        "lists are the test side)",
    ),
    tiers: str = typer.Option("a,c,bc", help="input tiers: a step metrics, b + trajectories, c + accuracy; "
                              "a-trainer: tier a as the TRL callback sees it (advantage invariants, on-policy known)"),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="write the full result (incl. confusion matrix) as JSON"
    ),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the tables as Markdown"),
    image: Optional[Path] = typer.Option(
        None, "--image", help="confusion-matrix PNG (default: next to --markdown or --json)"
    ),
    alarms: str = typer.Option(
        "detector",
        help="where each faulty run is diagnosed: detector (the shipped detector's first alarm at/after onset, "
        "fall-back onset+2), fallback (onset+2), or a detection result JSON of the same data and split (the "
        "fold-fitted detector's first alarm)",
    ),
    alarm_tier: str = typer.Option("a", help="with a detection JSON: the tier whose alarms are used"),
    alarm_method: str = typer.Option("RFT-FM", help="with a detection JSON: the method whose alarms are used "
                                     "(\"RFT-FM in the trainer\": from `bench evaluate detection --in-trainer`)"),
    loto: bool = typer.Option(False, "--loto/--no-loto", help="run the leave-one-type-out test on the last fold "
                              "(one retraining per type)"),
    fold: Optional[str] = typer.Option(None, help="evaluate only these folds (comma-separated, e.g. task=digits)"),
) -> None:
    """Diagnose every faulty held-out run at alarm time; Diagnoser vs kNN vs expert rules."""
    from rftfm.bench.eval_diagnosis import evaluate_split

    runs, features = _load_features(data)
    alarm_fn = _alarm_function(alarms, alarm_tier, runs, split, alarm_method)
    only = _known_folds(fold, runs, split)
    result, _ = evaluate_split(runs, features, split, alarm_fn=alarm_fn, leave_one_type_out=loto, progress=console.log,
                               tiers=tuple(t.strip() for t in tiers.split(",") if t.strip()), only=only)
    result["command"] = command_line(ctx)
    _write_diagnosis_result(result, split, markdown, json_out, image)


def _known_folds(fold: str | None, runs: Any, split: str) -> list[str] | None:
    """The folds ``--fold`` names (None: every fold); an unknown name fails clearly."""
    from rftfm.bench.splits import folds as split_folds

    if not fold:
        return None
    only = [f.strip() for f in fold.split(",") if f.strip()]
    unknown = sorted(set(only) - {name for name, _, _ in split_folds(runs, split)})
    if unknown:
        fail(f"--fold: no fold {unknown} in split {split!r}")
    return only


def _alarm_function(alarms: str, alarm_tier: str, runs: Any, split: str, method: str = "RFT-FM") -> Any:
    """Where each faulty run is diagnosed (see ``--alarms``); a detection JSON must cover the split's folds."""
    from rftfm.bench.eval_diagnosis import FoldDetectorAlarms, detector_alarm_steps, fallback_alarms
    from rftfm.bench.splits import folds as split_folds

    if alarms == "detector":
        return detector_alarm_steps
    if alarms == "fallback":
        return fallback_alarms
    try:
        alarm_fn = FoldDetectorAlarms(json.loads(Path(alarms).read_text(encoding="utf-8")), alarm_tier, method)
    except (OSError, ValueError) as exc:
        fail(f"--alarms {alarms}: {exc}")
    missing = sorted({name for name, _, _ in split_folds(runs, split)} - alarm_fn.folds)
    if missing:
        fail(f"--alarms {alarms} has no outcomes for folds {missing} of split {split!r}: same data and split?")
    return alarm_fn


def _write_diagnosis_result(
    result: dict[str, Any], split: str, markdown: Path | None, json_out: Path | None, image: Path | None
) -> None:
    """Print the tables; write them, the JSON and the confusion matrix (default: ``<markdown or json
    stem>-confusion.png`` beside it, so two evaluations of one split keep their own image)."""
    from rftfm.bench.eval_diagnosis import markdown_report, plot_confusion

    if image is None and (markdown or json_out):
        written = markdown or json_out
        image = written.with_name(f"{written.stem}-confusion.png")
    rel = None
    if image:
        tier = next(iter(result["tiers"]))
        plot_confusion(
            result["tiers"][tier]["confusion"], image, title=f"Diagnoser at alarm time, split {split}, tier {tier}"
        )
        rel = os.path.relpath(image, markdown.parent) if markdown else str(image)
        result["confusion_image"] = str(image)
    text = markdown_report(result, rel)
    console.print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text, encoding="utf-8")
        console.print(f"wrote {markdown}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        console.print(f"wrote {json_out}")


def diagnose_command(
    run: Path = typer.Argument(..., help="log file or run directory (as for rftfm watch: TRL output dir, verl log)"),
    model: Optional[Path] = typer.Option(None, "--model", help="diagnoser JSON (default: the packaged artifact)"),
    step: Optional[int] = typer.Option(None, "--step", help="diagnose at this step (default: the first detector "
                                       "alarm, else the last step)"),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | openrlhf | verl | trl | jsonl"),
    task_group: Optional[str] = typer.Option(None, help="task group (default: from run_info.json if present)"),
    model_size: Optional[str] = typer.Option(None, help="model size (default: from run_info.json if present)"),
    as_json: bool = typer.Option(False, "--json", help="print the Diagnosis as JSON"),
) -> None:
    """Diagnose a run from its log: ranked fault types with probabilities, evidence and a one-line summary."""
    from rftfm.cli.common import read_run
    from rftfm.fm.monitor import RunMonitor, load_detector, load_diagnoser
    from rftfm.io.adapters import run_info_for

    events, _ = read_run(run, fmt, None)
    info = run_info_for(run) or {}  # configuration only; the label fields are not read
    task_group = task_group or info.get("task_group")
    model_size = model_size or info.get("model_size")
    diagnoser, why = load_diagnoser(model)
    if diagnoser is None:
        fail(why or "no diagnoser")
    detector, _ = load_detector() if step is None else (None, None)
    run_id = events[0][0].run_id
    monitor = RunMonitor(run_id, detector, None, None, task_group=task_group, model_size=model_size,
                         max_history=len(events))
    monitor.observe_batch(events)
    source = "--step"
    if step is None:
        first = monitor.result.first_alarm_step
        step, source = (first, "first detector alarm") if first is not None else (events[-1][0].step, "last step")
        if detector is not None and first is None:
            source = "last step (the detector raised no alarm)"
    try:
        diagnosis = diagnoser.diagnose(monitor.history_frame(), run_id, step, task_group=task_group,
                                       model_size=model_size)
    except Exception as exc:  # a diagnoser that cannot read this run: one line, not a traceback
        fail(f"cannot diagnose {run} at step {step}: {type(exc).__name__}: {exc}")
    if as_json:
        print(diagnosis.model_dump_json(indent=1))
        return
    console.print(f"[bold]{run_id}[/] diagnosed at step {step} ({source}); "
                  f"task group {task_group or '?'}, model size {model_size or '?'}")
    _print_diagnosis(diagnosis)


def _print_diagnosis(diagnosis: Any) -> None:
    """Summary, the three best hypotheses and the evidence, as tables."""
    from rftfm.signals import label

    console.print(f"[bold]{diagnosis.summary}[/]")
    if diagnosis.unknown:
        console.print("[yellow]unknown fault: no known fingerprint fits well; closest known types below[/]")
    table = Table(title="ranked hypotheses")
    for col in ("family", "fault type", "probability"):
        table.add_column(col)
    for h in diagnosis.ranked[:3]:
        table.add_row(h.family, h.fault_type, f"{h.probability:.3f}")
    console.print(table)
    ev = Table(title="evidence (vs the run's own baseline)")
    for col in ("signal", "direction", "value", "baseline", "z", "since step"):
        ev.add_column(col)
    for e in diagnosis.evidence:
        arrow = e.direction if e.measured else "–"  # a run's first records: no baseline, no direction
        if e.value is not None and e.expected is not None and e.value != e.expected:
            arrow = "up" if e.value > e.expected else "down"
        ev.add_row(label(e.signal), arrow, f"{e.value:.4g}" if e.value is not None else "–",
                   f"{e.expected:.4g}" if e.expected is not None else "–",
                   f"{e.z:+.1f}" if e.z is not None else "–", str(e.since_step))
    console.print(ev)


def register(apps: "Apps") -> None:
    """``rftfm diagnose``, ``rftfm fit diagnoser``, ``rftfm bench evaluate diagnosis``."""
    apps.root.command("diagnose")(diagnose_command)
    apps.fit.command("diagnoser")(fit_diagnoser)
    apps.evaluate.command("diagnosis")(evaluate_diagnosis)
