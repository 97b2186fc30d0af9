"""``rftfm report``: one HTML post-mortem of a run (alarm episodes, the signals behind them, the rest folded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape

from rftfm.cli.common import fail, open_store, read_run, safe_file_name
from rftfm.fm.monitor import LazyDiagnoser, RunMonitor, load_detector, load_diagnoser
from rftfm.report.console import console

if TYPE_CHECKING:
    from rftfm.cli.main import Apps


def _recorded(run: str, incidents: Path | None, run_id: str | None) -> tuple[Path, str | None, Any]:
    """(log path, run id, open store or None): a run id recorded in ``incidents`` names the log it was watched from."""
    path = Path(run)
    if incidents is None:
        return path, run_id, None
    if not incidents.exists():
        fail(f"incident store {incidents} does not exist")
    store = open_store(incidents)
    if not path.exists():
        runs = [e for e in store.events(run_id=run, kind="run") if e["payload"].get("source")]
        if not runs:
            store.close()
            fail(f"{run} is neither a path nor a run recorded in {incidents}")
        path, run_id = Path(runs[-1]["payload"]["source"]), run_id or run
    return path, run_id, store


def offline_incidents(
    run_id: str, records: list, detector_path: Path | None, diagnoser_path: Path | None
) -> tuple[list, str | None]:
    """Alarms and diagnoses of a log computed now (no recorded incidents), as incident dicts, and a note saying so."""
    detector, why = load_detector(detector_path)
    if detector is None:
        return [], why
    diagnoser = LazyDiagnoser(lambda: load_diagnoser(diagnoser_path))
    events: list[dict[str, Any]] = []

    def event(kind: str, step: int, payload: Any) -> dict[str, Any]:
        return {
            "kind": kind,
            "run_id": run_id,
            "step": step,
            "time": float(len(events)),
            "payload": payload.model_dump(),
        }

    def on_step(step: Any, alarm: Any) -> None:
        if alarm is not None:
            events.append(event("alarm", step.step, alarm))

    monitor = RunMonitor(run_id, detector, diagnoser, None, on_step=on_step)
    for step, trajectories in records:
        _, diagnosis = monitor.observe(step, trajectories)
        if diagnosis is not None:
            events.append(event("diagnosis", step.step, diagnosis))
    note = "; ".join(
        filter(None, ["alarms and diagnoses computed offline by rftfm report (not recorded live)", diagnoser.why])
    )
    return events, note


def report(
    run: str = typer.Argument(
        ..., help="log file, run directory (TRL output dir too), or a run id recorded in --incidents"
    ),
    incidents: Optional[Path] = typer.Option(
        None, "--incidents", help="incident store with this run's alarms, diagnoses and actions"
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: <run id>.html)"),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | openrlhf | verl | trl | jsonl"),
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="run id (default: run_info.json, else the run directory or file name)"
    ),
    detect: bool = typer.Option(
        True, "--detect/--no-detect", help="without recorded incidents, run detection and diagnosis offline"
    ),
    detector_path: Optional[Path] = typer.Option(
        None, "--detector", help="detector artifact (default: the packaged one)"
    ),
    diagnoser_path: Optional[Path] = typer.Option(
        None, "--diagnoser", help="diagnoser artifact (default: the packaged one)"
    ),
    inline_js: bool = typer.Option(
        False,
        "--inline-js/--shared-js",
        help="embed plotly.js in the page (one file, +4.8 MB) instead of one shared copy beside it",
    ),
) -> None:
    """Write an HTML post-mortem of a run (plotly; no network needed to view it)."""
    from rftfm.io.adapters import run_info_for
    from rftfm.report.html import write_report

    path, run_id, store = _recorded(run, incidents, run_id)
    try:
        records, stats = read_run(path, fmt, run_id)
    except typer.Exit:
        if store is not None:
            store.close()
        raise
    events: list[dict[str, Any]] = []
    rid = records[0][0].run_id
    if store is not None:
        events = store.events(run_id=rid)
        store.close()
    note = None
    if detect and not any(e["kind"] in ("alarm", "diagnosis") for e in events):
        offline, note = offline_incidents(rid, records, detector_path, diagnoser_path)
        events += offline
    target = out or safe_file_name(rid, ".html")
    page = write_report(
        target,
        rid,
        records,
        events,
        source=str(path),
        stats=stats,
        note=note,
        ground_truth=run_info_for(path),
        inline_js=inline_js,
    )
    shared = "" if inline_js else "; plotly.js shared beside it"
    console.print(
        f"wrote {escape(str(page))} ({page.stat().st_size / 1e6:.2f} MB, {len(records)} steps, "
        f"{len(events)} incident events{shared})"
    )


def register(apps: "Apps") -> None:
    """``rftfm report``."""
    apps.root.command("report")(report)
