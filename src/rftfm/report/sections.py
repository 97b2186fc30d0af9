"""The text sections of a report: summary, alarm episodes, diagnosis, completions, incident timeline."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

from rftfm.fm.monitor import how_it_ended
from rftfm.fm.types import Episode, SignalEvidence
from rftfm.records import STEP_METRICS, StepRecord, TrajectoryRecord, finite_or_none
from rftfm.report.console import evidence_line, evidence_text
from rftfm.report.figures import esc

Event = tuple[StepRecord, list[TrajectoryRecord]]
MARKER_COLORS = {"alarm": "#d62728", "diagnosis": "#ff7f0e", "action": "#2ca02c", "outcome": "#17becf"}


def fmt_time(t: Any) -> str:
    try:
        return datetime.fromtimestamp(float(t), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def _fmt_num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, (int, float)):
        return esc(f"{value:.4g}")
    return esc(value)


def _describe(event: dict[str, Any]) -> str:
    p = event.get("payload") or {}
    kind = event["kind"]
    if kind == "alarm":
        signals = ", ".join(evidence_text(SignalEvidence.model_validate(e)) for e in p.get("evidence", [])[:4])
        return f"score {_fmt_num(p.get('score'))} ≥ {_fmt_num(p.get('threshold'))}: {esc(signals)}"
    if kind == "diagnosis":
        ranked = p.get("ranked") or []
        top = (
            "unknown (abstained)"
            if p.get("unknown") or not ranked
            else f"{ranked[0].get('fault_type')} ({ranked[0].get('family')}) "
            f"p={float(ranked[0].get('probability') or 0):.2f}"
        )
        return esc(p.get("summary") or top)
    if kind == "action":
        return esc(
            f"{p.get('kind')} {p.get('knob') or ''} {p.get('previous')!r} → {p.get('value')!r} "
            f"{p.get('reason') or ''}".strip()
        )
    if kind == "outcome":
        action = p.get("action") or {}
        return esc(f"{p.get('result')}: {action.get('kind')} {action.get('knob') or ''} {p.get('detail') or ''}")
    if kind == "error":
        return esc(p.get("error") or p)
    return esc(", ".join(f"{k}={v}" for k, v in p.items()))


def _direction(ev: dict[str, Any]) -> Any:
    """up / down from the value against its baseline when both are numbers (the arrow agrees with the sign)."""
    value, expected = finite_or_none(ev.get("value")), finite_or_none(ev.get("expected"))
    if value is not None and expected is not None and value != expected:
        return "up" if value > expected else "down"
    if expected is None and finite_or_none(ev.get("z")) is None:
        return "–"  # a run's first records: no baseline, no direction
    return ev.get("direction")


def timeline_html(incidents: Sequence[dict[str, Any]], limit: int = 500) -> str:
    """Every event but the per-step alarms (the episodes table sums those up), in a fold."""
    if not incidents:
        return "<p class='muted'>No incidents recorded for this run.</p>"
    alarms = sum(e["kind"] == "alarm" for e in incidents)
    incidents = [e for e in incidents if e["kind"] != "alarm"]
    note = (
        f"<p class='muted'>{alarms} per-step alarm event(s) are summed up in the episodes above.</p>" if alarms else ""
    )
    if not incidents:
        return note
    rows = []
    shown = list(incidents)[:limit]
    for e in shown:
        color = MARKER_COLORS.get(e["kind"], "#555")
        rows.append(
            f"<tr><td>{esc(fmt_time(e.get('time')))}</td><td>{esc(e.get('step'))}</td>"
            f"<td><span class='tag' style='background:{color}'>{esc(e['kind'])}</span></td><td>{_describe(e)}</td></tr>"
        )
    more = f"<p class='muted'>{len(incidents) - limit} more events not shown.</p>" if len(incidents) > limit else ""
    table = (
        "<table><thead><tr><th>time</th><th>step</th><th>kind</th><th>what</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return note + f"<details><summary>{len(incidents)} event(s)</summary>{table}{more}</details>"


def diagnosis_html(incidents: Sequence[dict[str, Any]]) -> str:
    diagnoses = [e for e in incidents if e["kind"] == "diagnosis"]
    if not diagnoses:
        return "<p class='muted'>No diagnosis for this run.</p>"
    d = diagnoses[-1]["payload"]
    parts = [f"<p><b>step {esc(d.get('step'))}</b>: {esc(d.get('summary') or '')}</p>"]
    if d.get("unknown"):
        parts.append("<p>The diagnoser abstained: no known fault fingerprint fits.</p>")
    ranked = d.get("ranked") or []
    if ranked:
        parts.append(
            "<table><thead><tr><th>rank</th><th>fault type</th><th>family</th><th>probability</th></tr></thead><tbody>"
        )
        for i, h in enumerate(ranked[:5], start=1):
            parts.append(
                f"<tr><td>{i}</td><td>{esc(h.get('fault_type'))}</td><td>{esc(h.get('family'))}</td><td>{_fmt_num(h.get('probability'))}</td></tr>"
            )
        parts.append("</tbody></table>")
    evidence = d.get("evidence") or []
    if not evidence:
        alarms = [e for e in incidents if e["kind"] == "alarm"]
        evidence = (alarms[-1]["payload"].get("evidence") or []) if alarms else []
    if evidence:
        parts.append(
            "<h3>evidence</h3><table><thead><tr><th>signal</th><th>direction</th><th>value</th><th>baseline</th>"
            "<th>z</th><th>since step</th></tr></thead><tbody>"
        )
        for ev in evidence[:20]:
            parts.append(
                f"<tr><td>{esc(ev.get('signal'))}</td><td>{esc(_direction(ev))}</td><td>{_fmt_num(ev.get('value'))}</td>"
                f"<td>{_fmt_num(ev.get('expected'))}</td><td>{_fmt_num(ev.get('z'))}</td><td>{esc(ev.get('since_step'))}</td></tr>"
            )
        parts.append("</tbody></table>")
    return "".join(parts)


def completions_html(events: Sequence[Event], incidents: Sequence[dict[str, Any]], limit: int = 8) -> str:
    alarms = sorted({int(e["step"]) for e in incidents if e.get("kind") == "alarm" and isinstance(e.get("step"), int)})
    with_text = [(s, t) for s, t in events if any(x.completion is not None for x in t)]
    if not with_text:
        return (
            "<p class='muted'>The log has no completions (only the OpenRLHF / RFT-FaultBench layout records them).</p>"
        )
    chosen = next(((s, t) for s, t in with_text if alarms and s.step >= alarms[0]), with_text[-1])
    step, trajs = chosen
    rows = [
        f"<p>step {esc(step.step)}{' (first alarm)' if alarms and step.step == alarms[0] else ''}:</p>"
        "<table><thead><tr><th>prompt</th><th>reward</th><th>length</th><th>completion</th></tr></thead><tbody>"
    ]
    for t in [t for t in trajs if t.completion is not None][:limit]:
        rows.append(
            f"<tr><td>{esc(t.prompt_id)}</td><td>{_fmt_num(t.reward)}</td><td>{esc(t.response_length)}</td><td><pre>{esc(t.completion)}</pre></td></tr>"
        )
    return "".join(rows) + "</tbody></table>"


def summary_html(
    run_id: str,
    events: Sequence[Event],
    incidents: Sequence[dict[str, Any]],
    episodes: Sequence[Episode],
    source: str | None,
    stats: Any,
    note: str | None,
    ground_truth: dict[str, Any] | None,
    onset: int | None,
    present: Sequence[str],
) -> str:
    from rftfm.report.summary import input_problems

    records = [s for s, _ in events]
    alarms = sorted({e["step"] for e in incidents if e["kind"] == "alarm" and isinstance(e.get("step"), int)})
    kinds = {k: sum(e["kind"] == k for e in incidents) for k in ("diagnosis", "action", "outcome", "error")}
    rows: list[tuple[str, Any]] = [
        ("run", run_id),
        ("source", source or ""),
        ("read as", getattr(stats, "described", None) or getattr(stats, "format", None) or ""),
        ("steps", f"{len(records)} ({records[0].step}–{records[-1].step})" if records else "0"),
        ("trajectories", sum(len(t) for _, t in events)),
        (
            "alarm episodes",
            f"{len(episodes)} ({len(alarms)} alarmed steps, first at step {alarms[0]})" if alarms else "none",
        ),
        ("other incident events", ", ".join(f"{v} {k}" for k, v in kinds.items() if v) or "none"),
    ]
    if ground_truth:
        kind = ground_truth.get("control_or_fault")
        label = (
            f"fault {ground_truth.get('fault_type')} ({ground_truth.get('fault_family')}, "
            f"{ground_truth.get('fault_strength')}) from step {onset}"
            if kind == "fault"
            else f"{kind} run (no fault injected)"
        )
        rows.append(("benchmark label (evaluation only)", label))
    if stats is not None and hasattr(stats, "metric_problems"):
        for line in input_problems(stats):
            rows.append(("input", line))
    elif stats is not None and getattr(stats, "malformed_lines", 0):
        rows.append(("malformed lines skipped", stats.malformed_lines))
    missing = [m for m in STEP_METRICS if m not in present]
    if missing:
        rows.append(("signals not in this log", ", ".join(missing)))
    table = "<table class='kv'>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"
    return table + (f"<p class='muted'>{esc(note)}</p>" if note else "")


def episodes_html(episodes: Sequence[Episode], labels: Sequence[str], limit: int = 200) -> str:
    """One row per alarm episode: its steps, its diagnosis (named here once) and the evidence it rests on."""
    if not episodes:
        return "<p class='muted'>No alarm.</p>"
    rows = []
    for i, (episode, label) in enumerate(zip(episodes[:limit], labels), start=1):
        summary = episode.diagnosis.summary if episode.diagnosis is not None else ""
        rows.append(
            f"<tr class='episode'><td>{i}</td><td>{episode.start_step}–{episode.end_step}</td>"
            f"<td>{episode.alarmed_steps}</td>"
            f"<td><b>{esc(label) or 'not diagnosed'}</b>{'<br>' + esc(summary) if summary else ''}</td>"
            f"<td>{esc(evidence_line(episode.evidence, 3))}</td><td>{esc(episode_ending(episode))}</td></tr>"
        )
    more = f"<p class='muted'>{len(episodes) - limit} more episodes not listed.</p>" if len(episodes) > limit else ""
    return (
        "<table><thead><tr><th>#</th><th>steps</th><th>alarmed steps</th><th>diagnosis</th>"
        "<th>evidence (value vs baseline)</th><th>ended</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + more
    )


_ENDINGS = {
    "open": "still alarming when the log ended",
    "not judged": "alarms stopped",
    "came back": "alarms stopped, the run came back",
    "settled": "alarms stopped, the run did not come back: ",
}


def episode_ending(episode: Episode) -> str:
    """How an episode ended, in words: still open, the run came back, or it settled away (and where)."""
    end = how_it_ended(episode)
    return _ENDINGS[end] + (evidence_line(episode.lasting or [], 3) if end == "settled" else "")
