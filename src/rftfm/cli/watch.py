"""``rftfm watch`` (follow a run's log, detect, diagnose, alert) and ``rftfm report`` (HTML post-mortem).

Exit codes of ``rftfm watch`` (documented in ``docs/integrations/jsonl.md``):

* 0 — the log was read and no alarm was raised;
* 1 — at least one alarm was raised;
* 2 — bad input or usage (path missing, unknown format, no training step found);
* 3 — the log was read but detection is unavailable (no detector installed or it failed to load).

The watcher never raises into the caller because of a log line: malformed lines are counted,
detector / diagnoser errors are recorded in the incident store as ``error`` events.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape

from rftfm.fm.monitor import RunMonitor, WatchResult, load_detector, load_diagnoser
from rftfm.fm.types import Alarm, Diagnosis
from rftfm.report.console import console, print_alarm

if TYPE_CHECKING:
    from rftfm.cli.main import Apps

EXIT_OK, EXIT_ALARM, EXIT_BAD_INPUT, EXIT_NO_DETECTION = 0, 1, 2, 3


def exit_code(result: WatchResult) -> int:
    """The watch's exit code (see the module docstring)."""
    if result.alarm_count:
        return EXIT_ALARM
    if result.steps == 0:
        return EXIT_BAD_INPUT
    return EXIT_OK if result.detection else EXIT_NO_DETECTION


# --- the commands -----------------------------------------------------------------------------


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_BAD_INPUT)


def _open_store(path: Path) -> Any:
    import sqlite3

    from rftfm.fm.incidents import IncidentStore

    try:
        return IncidentStore(path)
    except (sqlite3.Error, OSError) as exc:
        _fail(f"cannot open the incident store {path}: {exc}")


def _open_source(log_source: Any, path: Path, fmt: str, run_id: str | None, follow: bool, interval: float,
                 idle_timeout: float | None, quiet: bool) -> Any:
    """The run's LogSource; when following, wait for a directory's log to appear (a run just starting)."""
    start, told = time.monotonic(), False
    while True:
        try:
            if follow and not path.exists() and path.suffix == "":  # maybe a run directory still to be created
                raise ValueError(f"{path} does not exist")
            return log_source(path, fmt, run_id)
        except (ValueError, OSError) as exc:
            if not follow or (idle_timeout is not None and time.monotonic() - start >= idle_timeout):
                _fail(str(exc))
            if not told and not quiet:
                console.print(f"[dim]waiting for a log at {escape(str(path))}…[/]")
                told = True
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                _fail(f"interrupted while waiting for {path}")


def watch(
    path: Path = typer.Argument(..., help="log file (JSONL, CSV, verl console log, trainer_state.json) or run directory"),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | openrlhf | verl | trl | jsonl"),
    incidents: Optional[Path] = typer.Option(None, "--incidents", help="SQLite incident store to record alarms and diagnoses in"),
    follow: bool = typer.Option(False, "--follow/--no-follow", help="keep following the file as it grows (like tail -F)"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="run id (default: run_info.json, else the run directory or file name)"),
    task_group: Optional[str] = typer.Option(None, "--task-group", help="task group, if known (helps calibration)"),
    model_size: Optional[str] = typer.Option(None, "--model-size", help="model size, if known"),
    interval: float = typer.Option(0.5, "--interval", min=0.01, help="seconds between polls when following"),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="stop following after this many seconds without new lines"),
    detector_path: Optional[Path] = typer.Option(None, "--detector", help="detector artifact (default: the packaged one)"),
    diagnoser_path: Optional[Path] = typer.Option(None, "--diagnoser", help="diagnoser artifact (default: the packaged one)"),
    use_wandb: bool = typer.Option(False, "--wandb", help="forward alerts with wandb.alert when wandb is installed and configured"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print alarms and the summary only"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write a machine-readable summary (JSON) here"),
) -> None:
    """Follow a run's log, detect anomalies, diagnose them, print alerts and record incidents.

    Exit code: 0 no alarm, 1 alarm raised, 2 bad input or usage, 3 detection unavailable.
    """
    from rftfm.io.adapters import FORMATS, LogSource

    if fmt != "auto" and fmt not in FORMATS:
        _fail(f"unknown --format {fmt!r}; expected auto, {', '.join(FORMATS)}")
    if not path.exists() and not follow:
        _fail(f"{path} does not exist")
    source = _open_source(LogSource, path, fmt, run_id, follow, interval, idle_timeout, quiet)
    detector, why_no_detector = load_detector(detector_path)
    diagnoser, why_no_diagnoser = load_diagnoser(diagnoser_path) if detector is not None else (None, None)
    for message in (why_no_detector, why_no_diagnoser):
        if message:
            console.print(f"[yellow]{escape(message)}[/]")
    store = None
    if incidents is not None:
        store = _open_store(incidents)
    alerter = None
    if use_wandb:
        from rftfm.integrations.wandb_alerts import WandbAlerter

        alerter, status = WandbAlerter.create(source.run_id)
        console.print(f"[dim]{escape(status)}[/]")

    def on_alarm(alarm: Alarm, diagnosis: Diagnosis | None, is_new: bool) -> None:
        print_alarm(alarm, diagnosis, is_new)
        if alerter is not None and is_new:
            alerter.alert(alarm, diagnosis)

    monitor = RunMonitor(source.run_id, detector, diagnoser, store, on_alarm, task_group, model_size)
    if store is not None:
        store.record("run", source.run_id, None, {"source": str(path.resolve()), "format": fmt, "follow": follow, "started": time.time()})
    if not quiet:
        mode = "following" if follow else "reading"
        console.print(f"[bold]rftfm watch[/]: {mode} {escape(str(path))} as run [bold]{escape(source.run_id)}[/]")
    try:
        batches = source.follow(interval, idle_timeout) if follow else iter([source.read_all()])
        for batch in batches:
            for step, trajectories in batch:
                monitor.observe(step, trajectories)
                if follow and not quiet and step.step % 10 == 0:
                    console.print(f"[dim]step {step.step}[/]")
    except KeyboardInterrupt:
        console.print("[dim]interrupted[/]")
    finally:
        source.close()
        if alerter is not None:
            alerter.close()
    result = monitor.result
    stats = source.stats
    if store is not None:
        store.record("run", source.run_id, None, {"finished": time.time(), "steps": result.steps, "alarms": result.alarm_count, "format": stats.format, "malformed_lines": stats.malformed_lines})
        store.close()
    skipped = f", {stats.malformed_lines} malformed line(s) skipped" if stats.malformed_lines else ""
    summary = f"{result.steps} step(s) [{stats.format or 'unknown format'}], {result.alarm_count} alarm(s){skipped}"
    if result.error_count:
        summary += f", {result.error_count} monitor error(s) recorded"
    console.print(f"[bold]summary[/]: {escape(summary)}")
    if result.steps == 0:
        console.print(f"[bold red]error:[/] no training step found in {escape(str(path))}")
    if json_out is not None:
        last = result.last_diagnosis
        top = last.top if last is not None else None
        summary_doc = {
            "run_id": source.run_id, "source": str(path), "format": stats.format, "steps": result.steps,
            "trajectories": stats.trajectories, "alarms": result.alarm_count,
            "first_alarm_step": result.alarms[0].step if result.alarms else None,
            "alarm_steps": [a.step for a in result.alarms],  # the first KEEP_IN_MEMORY
            "diagnosis": top.model_dump() if top is not None else None,
            "diagnosis_summary": last.summary if last is not None else None,
            "detection": result.detection, "malformed_lines": stats.malformed_lines, "non_step_lines": stats.non_step_lines,
            "monitor_errors": result.error_count, "monitor_error_messages": result.errors[:20], "exit_code": exit_code(result),
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary_doc, indent=1), encoding="utf-8")
    raise typer.Exit(exit_code(result))


def report(
    run: str = typer.Argument(..., help="run directory, log file, or a run id recorded in --incidents"),
    incidents: Optional[Path] = typer.Option(None, "--incidents", help="incident store with this run's alarms, diagnoses and actions"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: <run id>.html)"),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | openrlhf | verl | trl | jsonl"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="run id (default: run_info.json, else the run directory or file name)"),
    detect: bool = typer.Option(True, "--detect/--no-detect", help="without recorded incidents, run detection and diagnosis offline"),
    detector_path: Optional[Path] = typer.Option(None, "--detector", help="detector artifact (default: the packaged one)"),
    diagnoser_path: Optional[Path] = typer.Option(None, "--diagnoser", help="diagnoser artifact (default: the packaged one)"),
) -> None:
    """Write one self-contained HTML post-mortem of a run (plotly, no network needed to view it)."""
    from rftfm.io.adapters import read_log
    from rftfm.report.html import write_report

    store = None
    events: list[dict[str, Any]] = []
    path = Path(run)
    if incidents is not None:
        if not incidents.exists():
            _fail(f"incident store {incidents} does not exist")
        store = _open_store(incidents)
        if not path.exists():  # a run id: find the log it was watched from
            runs = [e for e in store.events(run_id=run, kind="run") if e["payload"].get("source")]
            if not runs:
                store.close()
                _fail(f"{run} is neither a path nor a run recorded in {incidents}")
            path, run_id = Path(runs[-1]["payload"]["source"]), run_id or run
    if not path.exists():
        _fail(f"{path} does not exist")
    try:
        records, stats = read_log(path, fmt, run_id)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if not records:
        _fail(f"no training step found in {path}")
    rid = records[0][0].run_id
    if store is not None:
        events = store.events(run_id=rid)
        store.close()
    offline_note = None
    if not any(e["kind"] in ("alarm", "diagnosis") for e in events) and detect:
        detector, why = load_detector(detector_path)
        diagnoser, why_diag = load_diagnoser(diagnoser_path) if detector is not None else (None, None)
        offline_note = why or why_diag
        if detector is not None:
            from rftfm.fm.incidents import IncidentStore

            memory = IncidentStore(":memory:")
            monitor = RunMonitor(rid, detector, diagnoser, memory)
            for step, trajectories in records:
                monitor.observe(step, trajectories)
            events = events + memory.events(run_id=rid)
            memory.close()
            offline_note = "; ".join(filter(None, ["alarms and diagnoses computed offline by rftfm report (not recorded live)", why_diag]))
    # the run id may come from a log line: never let it pick a directory (e.g. "../../x")
    target = out or Path(re.sub(r"[^A-Za-z0-9._-]+", "_", rid).lstrip(".") + ".html")
    from rftfm.io.adapters import run_info_for

    write_report(target, rid, records, events, source=str(path), stats=stats, note=offline_note, ground_truth=run_info_for(path))
    console.print(f"wrote {escape(str(target))} ({target.stat().st_size / 1e6:.1f} MB, {len(records)} steps, {len(events)} incident events)")


def register(apps: "Apps") -> None:
    """``rftfm watch``, ``rftfm report``."""
    apps.root.command("watch")(watch)
    apps.root.command("report")(report)
