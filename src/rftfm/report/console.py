"""Alerts printed to a terminal or a log file (one line each, so a log stays greppable)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from rftfm.fm.types import Alarm, Diagnosis

console = Console(highlight=False, soft_wrap=True)  # an alert stays one line in a log file


def _evidence_text(alarm: Alarm, limit: int = 4) -> str:
    parts = []
    for ev in alarm.evidence[:limit]:
        arrow = "↑" if ev.direction == "up" else "↓"
        z = f" z={ev.z:+.1f}" if ev.z is not None else ""
        parts.append(f"{escape(ev.signal)} {arrow}{z}")
    return ", ".join(parts) or "no per-signal evidence"


def print_alarm(alarm: Alarm, diagnosis: Diagnosis | None, is_new: bool) -> None:
    """A full alert for a new alarm episode or diagnosis; one short line while it persists."""
    if not is_new:
        console.print(f"[red]alarm[/] {escape(alarm.run_id)} step {alarm.step}: score {alarm.score:.3g} — {_evidence_text(alarm, 2)}")
        return
    line = (
        f"[bold red]ALARM[/] {escape(alarm.run_id)} step {alarm.step}: score {alarm.score:.3g} "
        f"≥ {alarm.threshold:.3g} — {_evidence_text(alarm)}"
    )
    console.print(line)
    if diagnosis is None:
        return
    top = diagnosis.top
    body = [escape(diagnosis.summary)] if diagnosis.summary else []
    if top is None:
        body.append("no known fingerprint fits (abstained)")
    for hyp in diagnosis.ranked[:3]:
        body.append(f"{escape(hyp.fault_type)} ({escape(hyp.family)}): p={hyp.probability:.2f}")
    title = f"diagnosis at step {diagnosis.step}" + (f": [bold]{escape(top.fault_type)}[/]" if top else ": unknown")
    console.print(Panel("\n".join(body), title=title, border_style="yellow", expand=False))
