"""``rftfm demo`` (a run that heals itself) and ``rftfm bench evaluate remediation``.

The demo trains a tiny GPT-2 policy with TRL GRPO on the CPU three times with the same seed:
clean, with a mid-run fault and no loop, and with the same fault and the RFT-FM loop
(``RFTFMCallback``) attached. It prints the loop's timeline and a comparison table and
writes the HTML report of the healed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from rftfm.cli.common import command_line, fail, progress_columns

if TYPE_CHECKING:
    import polars as pl

    from rftfm.cli.main import Apps
    from rftfm.records import RunInfo

console = Console()
SPARK = "▁▂▃▄▅▆▇█"
STYLE = {
    "alarm": "red",
    "diagnosis": "yellow",
    "plan": "blue",
    "action": "green",
    "outcome": "cyan",
    "error": "magenta",
}


def _spark(values: list[float | None]) -> str:
    return "".join("·" if v is None else SPARK[min(len(SPARK) - 1, int(round(v * (len(SPARK) - 1))))] for v in values)


def _fallback_detector(info: Any, runs: int, progress: Progress) -> Any:
    """No shipped detector artifact: fit one on a few clean runs of the demo's configuration."""
    import polars as pl

    from rftfm.bench.runner import train_run
    from rftfm.fm.detect import Detector
    from rftfm.fm.features import step_features

    rows, infos = [], []
    task = progress.add_task("fitting a detector on clean runs", total=runs)
    for i in range(runs):
        clean = info.model_copy(
            update={
                "run_id": f"demo-normal-{i}",
                "seed": 1000 + i,
                "control_or_fault": "normal",
                "fault_type": None,
                "fault_strength": None,
                "fault_family": None,
            }
        )
        infos.append(
            {
                "run_id": clean.run_id,
                "control_or_fault": "normal",
                "task_group": clean.task_group,
                "model_size": clean.model_size,
            }
        )
        train_run(clean, [lambda r, t: rows.append({"run_id": r.run_id, "step": r.step, **step_features(r, t)})])
        progress.advance(task)
    return Detector().fit(pl.DataFrame(infos), pl.DataFrame(rows))


def register(apps: "Apps") -> None:
    """``rftfm demo``, ``rftfm bench evaluate remediation``."""
    apps.root.command("demo")(demo)
    apps.evaluate.command("remediation")(evaluate_remediation_cmd)


#: the demo's three trainings, in order: (arm, progress-bar label)
DEMO_ARMS = (
    ("clean", "clean run"),
    ("none", "faulty run, no loop"),
    ("loop", "faulty run + RFT-FM loop"),
)


def demo(
    fault: str = typer.Option("lr_high", help="fault type to inject (a knob-repairable type shows the repair)"),
    strength: str = typer.Option("easy", help="easy or hard"),
    onset: int = typer.Option(8, help="step at which the fault starts"),
    steps: int = typer.Option(20, help="training steps"),
    task_group: str = typer.Option("arith_a", help="task group: arith_a, arith_b or tool"),
    size: str = typer.Option("xs", help="model size: xs or s"),
    seed: int = typer.Option(7, help="seed shared by the three runs"),
    out: Path = typer.Option(Path("rftfm-demo"), help="directory for the incident store and the HTML report"),
    detector_path: Optional[Path] = typer.Option(
        None, "--detector", help="detector artifact (default: the shipped one)"
    ),
    diagnoser_path: Optional[Path] = typer.Option(
        None, "--diagnoser", help="diagnoser artifact (default: the shipped one)"
    ),
) -> None:
    """Train a tiny model with TRL on the CPU, inject a mid-run fault, watch RFT-FM detect, diagnose and repair it."""
    import torch

    from rftfm.bench.runner import quiet
    from rftfm.faults.taxonomy import FAULT_TYPES
    from rftfm.fm.incidents import IncidentStore

    quiet()
    torch.set_num_threads(1)
    info = _demo_run_info(fault, strength, onset, steps, task_group, size, seed)
    db = _fresh_incident_db(out)
    console.print(
        f"[bold]rftfm demo[/]: GRPO ({info.task_group}, model {size}, {steps} steps, seed {seed}); "
        f"fault [bold red]{fault}[/] ({strength}: {FAULT_TYPES[fault].injected_as}) from step {onset}"
    )
    start = time.perf_counter()
    curves: dict[str, list[float | None]] = {}
    results: dict[str, Any] = {}
    with Progress(*progress_columns(), console=console) as progress:
        _warm_start(info, progress)
        components = _load_components(info, detector_path, diagnoser_path, progress)
        store = IncidentStore(db)
        events: list[Any] = []
        for arm, label in DEMO_ARMS:
            curves[arm], results[arm] = _train_demo_arm(info, arm, label, components, store, events, progress)
    elapsed = time.perf_counter() - start
    _print_timeline(results["loop"][1])
    _print_comparison(results, curves, info)
    report = _write_report(out, info, events, store)
    store.close()
    console.print(f"incident store: {db}" + (f" · report: {report}" if report else ""))
    console.print(f"total {elapsed:.0f} s")
    (out / "demo.json").write_text(
        json.dumps({arm: r[0].__dict__ for arm, r in results.items()}, indent=1, default=str), encoding="utf-8"
    )


def _demo_run_info(
    fault: str, strength: str, onset: int, steps: int, task_group: str, size: str, seed: int
) -> RunInfo:
    """The demo's faulty run; a fault restricted to some task groups moves the run to the first of them."""
    from rftfm.faults.taxonomy import FAULT_TYPES
    from rftfm.records import RunInfo

    if fault not in FAULT_TYPES:
        raise typer.BadParameter(f"unknown fault {fault!r}; known: {', '.join(FAULT_TYPES)}")
    ftype = FAULT_TYPES[fault]
    if ftype.task_groups and task_group not in ftype.task_groups:
        task_group = ftype.task_groups[0]
    return RunInfo(
        run_id=f"demo-{fault}-{strength}",
        group=f"{ftype.family}_{strength}_fault",
        task_group=task_group,
        model_size=size,
        seed=seed,
        control_or_fault="fault",
        fault_family=ftype.family,
        fault_type=fault,
        fault_strength=strength,
        onset_step=onset,
        num_steps=steps,
    )


def _fresh_incident_db(out: Path) -> Path:
    """The incident store's path under ``out``, with the store (and its WAL files) of an earlier demo removed."""
    out.mkdir(parents=True, exist_ok=True)
    db = out / "incidents.db"
    if db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    return db


def _warm_start(info: RunInfo, progress: Progress) -> None:
    """The supervised starting policy the three arms share: trained on the first demo, cached after."""
    from rftfm.engine.sft import load_warm_start

    warm = progress.add_task("supervised warm start (cached after the first demo)", total=1)
    load_warm_start(info.task_group, info.model_size)
    progress.update(warm, completed=1)


def _load_components(
    info: RunInfo, detector_path: Path | None, diagnoser_path: Path | None, progress: Progress
) -> tuple[Any, Any]:
    """(detector, diagnoser): the given or shipped artifacts. Without a detector artifact one is fitted on
    clean runs; without a diagnoser every alarm gets the 'unknown' ladder (``None``)."""
    from rftfm.fm.detect import Detector
    from rftfm.fm.diagnose import Diagnoser

    try:
        detector = Detector.load(detector_path) if detector_path else Detector.load_default()
    except FileNotFoundError as exc:
        console.print(f"[yellow]{exc}: fitting a detector on 4 clean runs instead[/]")
        detector = _fallback_detector(info, 4, progress)
    try:
        diagnoser = Diagnoser.load(diagnoser_path) if diagnoser_path else Diagnoser.load_default()
    except FileNotFoundError as exc:
        diagnoser = None
        console.print(f"[yellow]{exc}: alarms get the 'unknown' ladder (rollback + halve the LR)[/]")
    return detector, diagnoser


def _train_demo_arm(
    info: RunInfo,
    arm: str,
    label: str,
    components: tuple[Any, Any],
    store: Any,
    events: list[Any],
    progress: Progress,
) -> tuple[list[float | None], tuple[Any, Any]]:
    """Train one arm under its own progress bar: its eval accuracy by step and (result, callback).

    The loop arm records to the demo's run id and sends its (step, trajectories) events to the report;
    the others train under their own run ids, with the same seed and fault."""
    from rftfm.bench import eval_remediation as ev

    steps = info.num_steps
    task = progress.add_task(label, total=steps)
    curve: list[float | None] = []

    def on_step(record: Any) -> None:
        curve.append(record.eval_accuracy)
        # a rollback extends the run by the steps it discarded: the bar grows with it
        progress.update(task, advance=1, total=max(steps, len(curve)))

    if arm == "loop":
        result, callback = ev.run_arm(
            info, arm, on_step=on_step, incidents=store, components=components,
            sink=lambda record, trajectories: events.append((record, trajectories)),
        )
    else:
        target = info.model_copy(update={"run_id": f"{info.run_id}~{arm}"})
        result, callback = ev.run_arm(
            target, arm, on_step=on_step, incidents=store if arm == "none" else None, components=components,
        )
    progress.update(task, completed=max(steps, len(curve)), total=max(steps, len(curve)))
    return curve, (result, callback)


def _print_timeline(callback: Any) -> None:
    table = Table(title="RFT-FM timeline (faulty run with the loop)", show_lines=False)
    table.add_column("step", justify="right")
    table.add_column("event")
    table.add_column("detail", overflow="fold")
    ctl = getattr(callback, "controller", None)
    if ctl is None:
        console.print(f"[red]the loop did not start: {getattr(callback, 'setup_error', None)}[/]")
        return
    if not ctl.timeline:
        table.add_row("-", "no alarm", "the detector saw nothing unusual")
    for step, kind, text in ctl.timeline:
        table.add_row(str(step), f"[{STYLE.get(kind, 'white')}]{kind}[/]", text)
    console.print(table)


def _print_comparison(results: dict[str, Any], curves: dict[str, list], info: Any) -> None:
    clean_acc = results["clean"][0].final_accuracy
    table = Table(title=f"final comparison ({info.fault_type}, {info.fault_strength}, onset step {info.onset_step})")
    for col in ("run", "accuracy", "vs clean", "actions", "wall", "eval accuracy by step"):
        table.add_column(col, justify="left" if col in ("run", "eval accuracy by step") else "right", no_wrap=True)
    names = {"none": "fault, no loop", "loop": "fault + RFT-FM", "clean": "clean"}
    for arm in ("none", "loop", "clean"):
        r = results[arm][0]
        ratio = r.final_accuracy / clean_acc if clean_acc else float("nan")
        table.add_row(
            names[arm],
            f"{r.final_accuracy:.3f}",
            f"{ratio:.0%}",
            str(r.interventions) if arm == "loop" else "-",
            f"{r.wall_s:.1f}s",
            _spark(curves.get(arm, [])),
        )
    console.print(table)
    loop = results["loop"][0]
    verdict = (
        "repaired"
        if loop.cleared and loop.final_accuracy >= 0.9 * clean_acc
        else "contained (halted on healthy weights)"
        if loop.halted
        else "not repaired"
    )
    console.print(f"verdict: [bold]{verdict}[/] · monitor time {loop.monitor_s:.2f} s of {loop.wall_s:.1f} s")


def _write_report(out: Path, info: Any, events: list, store: Any) -> Path | None:
    try:
        from rftfm.report.html import write_report
    except ImportError:
        return None
    try:
        return write_report(
            out / "report.html", info.run_id, events, store.events(run_id=info.run_id), source="rftfm demo"
        )
    except Exception as exc:  # the demo's result does not depend on the report
        console.print(f"[yellow]report not written: {exc}[/]")
        return None


def evaluate_remediation_cmd(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="benchmark directory whose runs are re-trained"),
    preset: Optional[str] = typer.Option(
        None,
        "--preset",
        help="instead of --data: the runs of this preset (mini|full); "
        "the evaluation re-trains every arm, so no generated data is needed",
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write rows and tables as JSON"),
    markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="write the tables as Markdown"),
    limit: Optional[int] = typer.Option(None, help="at most this many faulty runs"),
    per_type: Optional[int] = typer.Option(
        None, "--per-type", help="faulty runs per type x setting (alternating onsets)"
    ),
    healthy: Optional[int] = typer.Option(None, help="at most this many healthy (normal + control) runs"),
    types: Optional[str] = typer.Option(None, help="only these fault types (comma-separated)"),
    split: str = typer.Option("seed", help="evaluate the held-out side of this split (seed|task|size|config) or "
                              "'all'"),
    fold: Optional[str] = typer.Option(None, help="with --split config: the held-out folds (comma-separated, "
                                       "e.g. task=digits); fit --detector / --diagnoser with the same --fold"),
    side: str = typer.Option(
        "test",
        help="'test': the held-out side; 'train': the side the artifacts were fitted on "
        "(a development set for playbook changes, keeping the held-out side for the final number)",
    ),
    workers: int = typer.Option(1, help="worker processes"),
    detector_path: Optional[Path] = typer.Option(None, "--detector", help="detector artifact (default: shipped)"),
    diagnoser_path: Optional[Path] = typer.Option(None, "--diagnoser", help="diagnoser artifact (default: shipped)"),
    note: Optional[str] = typer.Option(
        None, help="a note placed under the results heading of the Markdown (provenance)"
    ),
    rows: Optional[Path] = typer.Option(
        None,
        "--rows",
        help="append each finished training here as a JSON line; trainings already in it are not re-run (resume)",
    ),
    from_json: Optional[Path] = typer.Option(
        None, "--from-json", help="do not train: re-render the tables of an earlier --json"
    ),
) -> None:
    """Re-train faulty runs with the loop on (matched seed and fault) against no remediation, a generic baseline
    and the clean run."""
    if from_json is not None:
        try:
            summary = json.loads(from_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"cannot read --from-json {from_json}: {exc}")
        _report_remediation(
            summary, json_out, markdown_out, note, summary.get("command", "rftfm bench evaluate remediation")
        )
        return
    runs = _remediation_runs(data, preset, split, fold, side)
    faulty, healthy_runs, total = _select_remediation_runs(runs, per_type, healthy, limit, types)
    summary = _train_remediation_arms(faulty, healthy_runs, total, detector_path, diagnoser_path, workers, rows)
    command = command_line(ctx)
    summary["command"] = command
    _report_remediation(summary, json_out, markdown_out, note, command)


def _remediation_runs(
    data: Path | None, preset: str | None, split: str, fold: str | None, side: str
) -> pl.DataFrame:
    """The runs table of ``--data`` or ``--preset``, cut to one side of the split: the held-out side by
    default, since the detector and diagnoser were fitted on the train side."""
    from rftfm.io.loader import load_runs

    if (data is None) == (preset is None):
        raise typer.BadParameter("give exactly one of --data and --preset", param_hint="--data / --preset")
    if preset is not None:
        from rftfm.bench.presets import PRESETS, preset_runs_table

        if preset not in PRESETS:
            raise typer.BadParameter(f"unknown preset {preset!r}; known: {sorted(PRESETS)}", param_hint="--preset")
        runs = preset_runs_table(preset)
    else:
        runs = load_runs(data)
    if split != "all":
        from rftfm.bench.splits import held_out

        if side not in ("test", "train"):
            raise typer.BadParameter("side must be 'test' or 'train'", param_hint="--side")
        try:
            runs = held_out(runs, split, fold)[1 if side == "test" else 0]
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--fold") from exc
    return runs


def _select_remediation_runs(
    runs: pl.DataFrame, per_type: int | None, healthy: int | None, limit: int | None, types: str | None
) -> tuple[list[RunInfo], list[RunInfo], int]:
    """(faulty runs, healthy runs, trainings) to re-train, the count printed."""
    from rftfm.bench import eval_remediation as ev

    type_list = [t.strip() for t in types.split(",") if t.strip()] if types else None
    try:
        faulty, healthy_runs = ev.select_runs(runs, per_type, healthy, limit, type_list)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--types") from exc
    total = ev.training_count(faulty, healthy_runs)
    console.print(
        f"{len(faulty)} faulty runs x {len(ev.FAULT_ARMS)} arms (clean arms shared per configuration and seed), "
        f"{len(healthy_runs)} healthy runs x {len(ev.HEALTHY_ARMS)} arms = {total} trainings"
    )
    return faulty, healthy_runs, total


def _train_remediation_arms(
    faulty: list[RunInfo],
    healthy_runs: list[RunInfo],
    total: int,
    detector_path: Path | None,
    diagnoser_path: Path | None,
    workers: int,
    rows: Path | None,
) -> dict[str, Any]:
    """Train every arm under one progress bar (trainings already in ``rows`` count as done); the summary."""
    from rftfm.bench import eval_remediation as ev

    with Progress(*progress_columns(), console=console) as progress:
        already = len(ev.read_rows(rows)) if rows is not None else 0  # resumed: these are not re-run
        task = progress.add_task("training", total=total, completed=min(already, total))
        return ev.evaluate(
            faulty,
            healthy_runs,
            str(detector_path) if detector_path else None,
            str(diagnoser_path) if diagnoser_path else None,
            workers=workers,
            on_done=lambda row: progress.advance(task),
            rows_path=rows,
        )



def _report_remediation(
    summary: dict[str, Any], json_out: Path | None, markdown_out: Path | None, note: str | None, command: str
) -> None:
    from rftfm.bench import eval_remediation as ev

    t = summary["tables"]
    for title, key, keys in (
        ("by class and setting", "by_class_setting", ["class", "setting"]),
        ("by family and setting", "by_family_setting", ["fault_family", "setting"]),
        ("by type and setting", "by_type_setting", ["fault_type", "setting"]),
    ):
        rows = t.get(key, [])
        table = Table(title=title)
        cols = keys + [
            "runs",
            "detected_%",
            "loop_repair_%",
            "generic_repair_%",
            "none_acc_ok_%",
            "loop_acc_ok_%",
            "loop_halted_%",
        ]
        for c in cols:
            table.add_column(c, justify="left" if c in keys else "right")
        for r in rows:
            table.add_row(*[str(r.get(c)) for c in cols])
        console.print(table)
    if "healthy" in t:
        console.print("healthy runs:", t["healthy"])
    for line in ev.target_status(summary):
        console.print(line)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        console.print(f"wrote {json_out}")
    if markdown_out:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(ev.markdown(summary, command, note), encoding="utf-8")
        console.print(f"wrote {markdown_out}")
