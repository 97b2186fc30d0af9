"""Alerts printed to a terminal or a log file: one line per episode change (a log stays greppable)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from rftfm.fm.monitor import EpisodeChange
from rftfm.fm.types import Alarm, Diagnosis, Episode, SignalEvidence
from rftfm.records import StepRecord

console = Console(highlight=False, soft_wrap=True)  # an alert stays one line in a log file


def _num(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def evidence_text(ev: SignalEvidence) -> str:
    """``reward_mean ↓ -0.98 (baseline -0.68)``: the value and what it is compared with, arrow from their sign."""
    if ev.non_finite:
        last = f" (last {_num(ev.expected)})" if ev.expected is not None else ""
        since = f" since step {ev.since_step}" if ev.since_step is not None else ""
        return f"{escape(ev.signal)} not finite{last}{since}"
    if ev.reward_identity and ev.value is not None and ev.expected is not None:
        since = f" since step {ev.since_step}" if ev.since_step is not None else ""
        arrow = "↑" if ev.value > ev.expected else "↓"
        parts = f"its functions' weighted means {_num(ev.expected)}"
        return f"{escape(ev.signal)} {arrow} {_num(ev.value)} ({parts}){since}"
    if ev.penalty_term is not None and ev.coefficient is not None and ev.value is not None:
        since = f" since step {ev.since_step}" if ev.since_step is not None else ""
        return f"{escape(ev.signal)} ↑ {_num(ev.value)} (+{ev.coefficient:.2g} x {ev.penalty_term}){since}"
    if ev.per_kl and ev.value is not None and ev.expected is not None:
        since = f" since step {ev.since_step}" if ev.since_step is not None else ""
        arrow = "↑" if ev.value > ev.expected else "↓"
        return f"{escape(ev.signal)} per unit of KL {arrow} {_num(ev.value)} (baseline {_num(ev.expected)}){since}"
    value, expected = ev.value, ev.expected
    finite = value is not None and expected is not None and math.isfinite(value) and math.isfinite(expected)
    if finite and value != expected:
        arrow = "↑" if value > expected else "↓"
    elif ev.z is not None and ev.z != 0:
        arrow = "↑" if ev.z > 0 else "↓"
    elif ev.measured:
        arrow = "↑" if ev.direction == "up" else "↓"
    else:  # a run's first records: no baseline, no direction
        arrow = "·"
    parts = [f"{escape(ev.signal)} {arrow}"]
    if value is not None and math.isfinite(value):
        parts.append(_num(value))
        if expected is not None and math.isfinite(expected):
            parts.append(f"(baseline {_num(expected)})")
    elif ev.z is not None:
        parts.append(f"z={ev.z:+.1f}")
    if ev.since_step is not None:
        parts.append(f"since step {ev.since_step}")
    return " ".join(parts)


def evidence_line(evidence: list[SignalEvidence], limit: int = 4) -> str:
    return ", ".join(evidence_text(ev) for ev in evidence[:limit]) or "no per-signal evidence"


def diagnosis_text(diagnosis: Diagnosis | None) -> str:
    if diagnosis is None:
        return "not diagnosed"
    top = diagnosis.top
    if top is None:
        return "unknown fault (no known fingerprint fits)"
    return f"{escape(top.fault_type)} ({escape(top.family)}, p={top.probability:.2f})"


def _diagnosis_panel(diagnosis: Diagnosis) -> None:
    top = diagnosis.top
    body = [escape(diagnosis.summary)] if diagnosis.summary else []
    if top is None:
        body.append("no known fingerprint fits (abstained)")
        if diagnosis.ranked:  # the model's ranking, shown for what it is: no type was probable or familiar enough
            body.append("closest known types, none of them a fit:")
    for hyp in diagnosis.ranked[:3]:
        body.append(f"{escape(hyp.fault_type)} ({escape(hyp.family)}): p={hyp.probability:.2f}")
    title = f"diagnosis at step {diagnosis.step}" + (f": [bold]{escape(top.fault_type)}[/]" if top else ": unknown")
    # wrapped inside its box (the console's soft wrap, one line per alert, would crop the sentence at the border)
    console.print(Panel("\n".join(body), title=title, border_style="yellow", expand=False), soft_wrap=False)


def print_episode(change: EpisodeChange, episode: Episode) -> None:
    """One line when an episode starts (plus its diagnosis), changes diagnosis, clears or ends open."""
    run = escape(episode.run_id)
    if change == "start":
        console.print(
            f"[bold red]ALARM[/] {run} from step {episode.start_step}: score {episode.peak_score:.3g} — "
            f"{evidence_line(episode.evidence)}"
        )
        if episode.diagnosis is not None:
            _diagnosis_panel(episode.diagnosis)
    elif change == "diagnosis" and episode.diagnosis is not None:
        console.print(
            f"[yellow]diagnosis[/] {run} episode from step {episode.start_step} is now "
            f"{diagnosis_text(episode.diagnosis)} at step {episode.diagnosis.step}"
        )
    elif change == "clear" and episode.lasting:
        console.print(
            f"[yellow]settled[/] {run} episode steps {episode.start_step}–{episode.end_step}: the alarms stopped but "
            f"the run did not come back — {evidence_line(episode.lasting, 3)} "
            f"({episode.alarmed_steps} alarmed step(s), {diagnosis_text(episode.diagnosis)})"
        )
    elif change == "clear":
        console.print(
            f"[green]cleared[/] {run} episode steps {episode.start_step}–{episode.end_step} "
            f"({episode.alarmed_steps} alarmed step(s), {diagnosis_text(episode.diagnosis)})"
        )
    elif change == "end":
        console.print(
            f"[red]open[/] {run} episode from step {episode.start_step} was still alarming when the log ended "
            f"({episode.alarmed_steps} alarmed step(s), {diagnosis_text(episode.diagnosis)})"
        )


def print_step(step: StepRecord, alarm: Alarm | None) -> None:
    """The verbose view: one line per logged step."""
    if alarm is None:
        console.print(f"[dim]step {step.step}: no alarm[/]")
    else:
        console.print(
            f"[red]alarm[/] step {step.step}: score {alarm.score:.3g} ≥ {alarm.threshold:.3g} — "
            f"{evidence_line(alarm.evidence, 3)}"
        )
