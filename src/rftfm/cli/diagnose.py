"""CLI for diagnosis: ``rftfm fit diagnoser``, ``rftfm bench evaluate diagnosis``, ``rftfm diagnose RUN_DIR``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

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
    split: str = typer.Option("all", help="train on the train side of this split (seed|task|size), or 'all' runs"),
) -> None:
    """Train the Diagnoser (fault-type classifier over scale-free dynamics + abstention thresholds)."""
    from rftfm.bench.eval_detection import config_groups
    from rftfm.bench.splits import split_runs
    from rftfm.fm.diagnose import Diagnoser

    runs, features = _load_features(data)
    train = runs if split == "all" else split_runs(runs, split)[0]
    with console.status(f"fitting on {train.height} runs"):
        diagnoser = Diagnoser().fit(train, features, groups=config_groups(train))
    path = diagnoser.save(out)
    console.print(f"diagnoser: {diagnoser.info} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


def evaluate_diagnosis(
    data: Path = typer.Option(..., "--data", help="benchmark directory"),
    split: str = typer.Option("config", help="config (held-out configurations, in folds) | seed | task | size"),
    tiers: str = typer.Option("a,c,bc", help="input tiers: a step metrics, b + trajectories, c + accuracy"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full result (incl. confusion matrix) as JSON"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="write the tables as Markdown"),
    image: Optional[Path] = typer.Option(None, "--image", help="confusion-matrix PNG (default: next to --markdown or --json)"),
    alarms: str = typer.Option("detector", help="detector (first alarm at/after onset, fall-back onset+2) or fallback"),
    loto: bool = typer.Option(False, "--loto/--no-loto", help="run the leave-one-type-out test on the last fold "
                              "(one retraining per type)"),
) -> None:
    """Diagnose every faulty held-out run at alarm time; Diagnoser vs kNN vs expert rules."""
    from rftfm.bench.eval_diagnosis import detector_alarm_steps, evaluate_split, fallback_alarm_steps, markdown_report, plot_confusion

    runs, features = _load_features(data)
    alarm_fn = detector_alarm_steps if alarms == "detector" else (lambda r, f: (fallback_alarm_steps(r, f), {"fallback": r.height}))
    result, _ = evaluate_split(runs, features, split, alarm_fn=alarm_fn, leave_one_type_out=loto, progress=console.log,
                               tiers=tuple(t.strip() for t in tiers.split(",") if t.strip()))
    if image is None and (markdown or json_out):
        image = (markdown or json_out).with_name(f"diagnosis_confusion_{split}.png")
    rel = None
    if image:
        tier = next(iter(result["tiers"]))
        plot_confusion(result["tiers"][tier]["confusion"], image, title=f"Diagnoser at alarm time, split {split}, tier {tier}")
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


def load_run_dir(run_dir: Path) -> tuple[pl.DataFrame, dict[str, str | None]]:
    """Features of one run directory (``<root>/<group>/<run_id>/``) and its task group / model size if known."""
    from rftfm.fm.features import features_frame
    from rftfm.io.faultbench import RUN_INFO_FILE, STEP_FILE, TRAJ_FILE
    from rftfm.io.loader import _STEP_KNOWN, _TRAJ_KNOWN, STEP_ALIASES, TRAJECTORY_ALIASES, LoadReport, _flatten, _frame, _read_jsonl

    run_dir = Path(run_dir)
    step_files = sorted(run_dir.glob(f"*/{STEP_FILE}")) or sorted(run_dir.glob(STEP_FILE))
    if not step_files:
        raise FileNotFoundError(f"no {STEP_FILE} under {run_dir}")
    sub = step_files[0].parent
    report = LoadReport()
    run_id = run_dir.name
    steps = []
    for i, obj in enumerate(_read_jsonl(sub / STEP_FILE, report)):
        row = _flatten(obj, STEP_ALIASES, _STEP_KNOWN)
        row["run_id"] = run_id
        row.setdefault("step", i + 1)
        steps.append(row)
    trajs = []
    if (sub / TRAJ_FILE).exists():
        for obj in _read_jsonl(sub / TRAJ_FILE, report):
            row = _flatten(obj, TRAJECTORY_ALIASES, _TRAJ_KNOWN)
            row["run_id"] = run_id
            trajs.append(row)
    steps_df = _frame(steps, ("run_id", "step"))
    trajs_df = _frame(trajs, ("run_id", "rollout_step")) if trajs else None
    config: dict[str, str | None] = {"task_group": None, "model_size": None}
    info_path = run_dir / RUN_INFO_FILE
    if info_path.exists():  # configuration only; the label fields are not read
        info = json.loads(info_path.read_text(encoding="utf-8"))
        config = {"task_group": info.get("task_group"), "model_size": info.get("model_size")}
    features = features_frame(steps_df, trajs_df)
    return features.drop([c for c in ("fault_active",) if c in features.columns]), config


def diagnose_command(
    run_dir: Path = typer.Argument(..., help="run directory <root>/<group>/<run_id>/"),
    model: Optional[Path] = typer.Option(None, "--model", help="diagnoser JSON (default: the packaged artifact)"),
    step: Optional[int] = typer.Option(None, "--step", help="diagnose at this step (default: first detector alarm, else the last step)"),
    task_group: Optional[str] = typer.Option(None, help="task group (default: from run_info.json if present)"),
    model_size: Optional[str] = typer.Option(None, help="model size (default: from run_info.json if present)"),
    as_json: bool = typer.Option(False, "--json", help="print the Diagnosis as JSON"),
) -> None:
    """Diagnose a finished run: ranked fault types with probabilities, evidence and a one-line summary."""
    from rftfm.fm.diagnose import Diagnoser
    from rftfm.signals import label

    features, config = load_run_dir(run_dir)
    task_group = task_group or config["task_group"]
    model_size = model_size or config["model_size"]
    diagnoser = Diagnoser.load(model) if model else Diagnoser.load_default()
    source = "--step"
    if step is None:
        step, source = int(features["step"].max()), "last step"
        try:
            from rftfm.fm.detect import Detector

            alarms = Detector.load_default().score_run(features, task_group=task_group, model_size=model_size)
            if alarms:
                step, source = int(alarms[0].step), "first detector alarm"
            else:
                source = "last step (the detector raised no alarm)"
        except Exception:  # no detector available: diagnose the whole run
            pass
    run_id = features["run_id"][0]
    diagnosis = diagnoser.diagnose(features, run_id, step, task_group=task_group, model_size=model_size)
    if as_json:
        print(diagnosis.model_dump_json(indent=1))
        return
    console.print(f"[bold]{run_id}[/] diagnosed at step {step} ({source}); task group {task_group or '?'}, model size {model_size or '?'}")
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
    for col in ("signal", "direction", "value", "expected", "z", "since step"):
        ev.add_column(col)
    for e in diagnosis.evidence:
        ev.add_row(label(e.signal), e.direction, f"{e.value:.4g}" if e.value is not None else "–",
                   f"{e.expected:.4g}" if e.expected is not None else "–", f"{e.z:+.1f}" if e.z is not None else "–", str(e.since_step))
    console.print(ev)


def register(apps: "Apps") -> None:
    """``rftfm diagnose``, ``rftfm fit diagnoser``, ``rftfm bench evaluate diagnosis``."""
    apps.root.command("diagnose")(diagnose_command)
    apps.fit.command("diagnoser")(fit_diagnoser)
    apps.evaluate.command("diagnosis")(evaluate_diagnosis)
