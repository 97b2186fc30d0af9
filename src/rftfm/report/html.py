"""One self-contained HTML post-mortem of a run: plotly figures (plotly.js inlined, no CDN) + tables.

Sections: summary; metric curves with markers for alarms (red), diagnoses (orange) and actions
(green); per-step trajectory distributions (reward, length, repetition) as box plots from
precomputed quartiles (the file stays small for long runs); the latest diagnosis with its
evidence; sample completions at the first alarm; the incident timeline; other logged metrics.

Every string that comes from a log or the incident store is escaped: HTML text through
:func:`html.escape`, figure data through JSON with ``<``, ``>`` and ``&`` written as ``\\uXXXX``
escapes, and trace names HTML-escaped again because plotly.js renders them as pseudo-HTML.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from rftfm.records import STEP_METRICS, StepRecord, TrajectoryRecord

Event = tuple[StepRecord, list[TrajectoryRecord]]

#: At most this many steps get a box per trajectory signal (evenly subsampled beyond).
MAX_BOX_STEPS = 80
#: At most this many extra (framework-specific) metrics are plotted; all are listed.
MAX_EXTRA_PLOTS = 12
MARKER_COLORS = {"alarm": "#d62728", "diagnosis": "#ff7f0e", "action": "#2ca02c", "outcome": "#17becf"}


def esc(value: Any) -> str:
    """HTML-escape any value for text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def _script_json(obj: Any) -> str:
    """JSON safe to embed inside a <script> element (no '<', '>' or '&' characters left)."""
    text = obj if isinstance(obj, str) else json.dumps(obj)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(values: Iterable[Any]) -> list[float | None]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            out.append(None)
            continue
        out.append(f if math.isfinite(f) else None)
    return out


# --- figures ----------------------------------------------------------------------------------


def _marker_steps(incidents: Sequence[dict[str, Any]], kind: str) -> list[int]:
    steps = set()
    for e in incidents:
        if e.get("kind") == kind and isinstance(e.get("step"), (int, float)) and not isinstance(e.get("step"), bool):
            steps.add(int(e["step"]))
    return sorted(steps)


def metric_figure(records: Sequence[StepRecord], incidents: Sequence[dict[str, Any]], names: Sequence[str], title: str,
                  extra: bool = False, onset_step: int | None = None) -> go.Figure | None:
    """Small multiples of the given metrics over steps, alarm markers on each curve."""
    steps = [r.step for r in records]
    series = {}
    for name in names:
        values = _finite((r.extra.get(name) if extra else getattr(r, name)) for r in records)
        if any(v is not None for v in values):
            series[name] = values
    if not series:
        return None
    cols = 3
    rows = math.ceil(len(series) / cols)
    height = 240 * rows + 110
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[esc(n) for n in series], vertical_spacing=min(0.3, 75 / height) if rows > 1 else 0.1)
    alarm_steps = set(_marker_steps(incidents, "alarm"))
    lines = {kind: _marker_steps(incidents, kind) for kind in ("diagnosis", "action")}
    for i, (name, values) in enumerate(series.items()):
        row, col = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=esc(name), marker={"size": 4}, showlegend=False), row=row, col=col)
        hits = [(s, v) for s, v in zip(steps, values) if s in alarm_steps and v is not None]
        if hits:
            fig.add_trace(
                go.Scatter(x=[s for s, _ in hits], y=[v for _, v in hits], mode="markers", name="alarm",
                           marker={"color": MARKER_COLORS["alarm"], "size": 9, "symbol": "x"}, showlegend=i == 0, legendgroup="alarm"),
                row=row, col=col,
            )
        if onset_step is not None:
            fig.add_vline(x=onset_step, line={"color": "#7f7f7f", "dash": "longdash", "width": 1}, row=row, col=col)
        for kind, marks in lines.items():
            for step in marks:
                fig.add_vline(x=step, line={"color": MARKER_COLORS[kind], "dash": "dot" if kind == "diagnosis" else "dash", "width": 1.5}, row=row, col=col)
    if onset_step is not None:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="fault onset (label)", line={"color": "#7f7f7f", "dash": "longdash"}))
    for kind, marks in lines.items():  # legend entries for the vertical lines
        if marks:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=kind, line={"color": MARKER_COLORS[kind], "dash": "dot" if kind == "diagnosis" else "dash"}))
    fig.update_layout(title=esc(title), height=max(height, 340), template="plotly_white", margin={"t": 90, "l": 50, "r": 20, "b": 40})
    return fig


def _box_stats(values: np.ndarray) -> dict[str, float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": float(q1), "median": float(med), "q3": float(q3), "mean": float(values.mean()),
            "lowerfence": float(inside.min()), "upperfence": float(inside.max())}


def trajectory_figure(events: Sequence[Event], incidents: Sequence[dict[str, Any]], onset_step: int | None = None) -> go.Figure | None:
    """Per-step distributions of reward, response length and repetition ratio."""
    with_trajs = [(s, t) for s, t in events if t]
    if not with_trajs:
        return None
    if len(with_trajs) > MAX_BOX_STEPS:
        idx = np.unique(np.linspace(0, len(with_trajs) - 1, MAX_BOX_STEPS).round().astype(int))
        with_trajs = [with_trajs[i] for i in idx]
    signals = (("reward", "reward"), ("response_length", "response length"), ("repetition_ratio", "repetition ratio"))
    fig = make_subplots(rows=len(signals), cols=1, shared_xaxes=True, subplot_titles=[t for _, t in signals], vertical_spacing=0.07)
    alarm_steps = set(_marker_steps(incidents, "alarm"))
    for row, (attr, label) in enumerate(signals, start=1):
        # two traces so that alarmed steps' boxes stand out in red
        groups = {flag: {k: [] for k in ("x", "q1", "median", "q3", "mean", "lowerfence", "upperfence")} for flag in (False, True)}
        for step, trajs in with_trajs:
            box = _box_stats(np.array([np.nan if getattr(t, attr) is None else float(getattr(t, attr)) for t in trajs], dtype=float))
            if box is None:
                continue
            stats = groups[step.step in alarm_steps]
            stats["x"].append(step.step)
            for key, value in box.items():
                stats[key].append(value)
        for alarmed, stats in groups.items():
            if stats["x"]:
                color = MARKER_COLORS["alarm"] if alarmed else "#1f77b4"
                name = f"{label} (alarm)" if alarmed else label
                fig.add_trace(go.Box(name=name, showlegend=False, marker={"color": color}, boxmean=True, **stats), row=row, col=1)
    fig.update_layout(title="trajectory distributions per step (box: quartiles, whiskers: 1.5 IQR, dashed: mean)",
                      height=720, template="plotly_white", margin={"t": 70, "l": 50, "r": 20, "b": 40})
    fig.update_xaxes(title_text="step", row=len(signals), col=1)
    for step in _marker_steps(incidents, "alarm")[:1]:
        fig.add_vline(x=step, line={"color": MARKER_COLORS["alarm"], "dash": "dash"}, annotation_text="first alarm")
    if onset_step is not None:
        fig.add_vline(x=onset_step, line={"color": "#7f7f7f", "dash": "longdash"}, annotation_text="fault onset (label)")
    return fig


# --- HTML sections ----------------------------------------------------------------------------


def _fmt_time(t: Any) -> str:
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
        signals = ", ".join(f"{e.get('signal')} {e.get('direction')}" for e in p.get("evidence", [])[:4])
        return f"score {_fmt_num(p.get('score'))} ≥ {_fmt_num(p.get('threshold'))}: {esc(signals)}"
    if kind == "diagnosis":
        ranked = p.get("ranked") or []
        top = "unknown (abstained)" if p.get("unknown") or not ranked else f"{ranked[0].get('fault_type')} ({ranked[0].get('family')}) p={float(ranked[0].get('probability') or 0):.2f}"
        return esc(p.get("summary") or top)
    if kind == "action":
        return esc(f"{p.get('kind')} {p.get('knob') or ''} {p.get('previous')!r} → {p.get('value')!r} {p.get('reason') or ''}".strip())
    if kind == "outcome":
        action = p.get("action") or {}
        return esc(f"{p.get('result')}: {action.get('kind')} {action.get('knob') or ''} {p.get('detail') or ''}")
    if kind == "error":
        return esc(p.get("error") or p)
    return esc(", ".join(f"{k}={v}" for k, v in p.items()))


def timeline_html(incidents: Sequence[dict[str, Any]], limit: int = 500) -> str:
    if not incidents:
        return "<p class='muted'>No incidents recorded for this run.</p>"
    rows = []
    shown = list(incidents)[:limit]
    for e in shown:
        color = MARKER_COLORS.get(e["kind"], "#555")
        rows.append(
            f"<tr><td>{esc(_fmt_time(e.get('time')))}</td><td>{esc(e.get('step'))}</td>"
            f"<td><span class='tag' style='background:{color}'>{esc(e['kind'])}</span></td><td>{_describe(e)}</td></tr>"
        )
    more = f"<p class='muted'>{len(incidents) - limit} more events not shown.</p>" if len(incidents) > limit else ""
    return "<table><thead><tr><th>time</th><th>step</th><th>kind</th><th>what</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + more


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
        parts.append("<table><thead><tr><th>rank</th><th>fault type</th><th>family</th><th>probability</th></tr></thead><tbody>")
        for i, h in enumerate(ranked[:5], start=1):
            parts.append(f"<tr><td>{i}</td><td>{esc(h.get('fault_type'))}</td><td>{esc(h.get('family'))}</td><td>{_fmt_num(h.get('probability'))}</td></tr>")
        parts.append("</tbody></table>")
    evidence = d.get("evidence") or []
    if not evidence:
        alarms = [e for e in incidents if e["kind"] == "alarm"]
        evidence = (alarms[-1]["payload"].get("evidence") or []) if alarms else []
    if evidence:
        parts.append("<h3>evidence</h3><table><thead><tr><th>signal</th><th>direction</th><th>value</th><th>expected</th><th>z</th><th>since step</th></tr></thead><tbody>")
        for ev in evidence[:20]:
            parts.append(
                f"<tr><td>{esc(ev.get('signal'))}</td><td>{esc(ev.get('direction'))}</td><td>{_fmt_num(ev.get('value'))}</td>"
                f"<td>{_fmt_num(ev.get('expected'))}</td><td>{_fmt_num(ev.get('z'))}</td><td>{esc(ev.get('since_step'))}</td></tr>"
            )
        parts.append("</tbody></table>")
    return "".join(parts)


def completions_html(events: Sequence[Event], incidents: Sequence[dict[str, Any]], limit: int = 8) -> str:
    alarms = _marker_steps(incidents, "alarm")
    with_text = [(s, t) for s, t in events if any(x.completion is not None for x in t)]
    if not with_text:
        return "<p class='muted'>The log has no completions (only the OpenRLHF / RFT-FaultBench layout records them).</p>"
    chosen = next(((s, t) for s, t in with_text if alarms and s.step >= alarms[0]), with_text[-1])
    step, trajs = chosen
    rows = [f"<p>step {esc(step.step)}{' (first alarm)' if alarms and step.step == alarms[0] else ''}:</p><table><thead><tr><th>prompt</th><th>reward</th><th>length</th><th>completion</th></tr></thead><tbody>"]
    for t in [t for t in trajs if t.completion is not None][:limit]:
        rows.append(f"<tr><td>{esc(t.prompt_id)}</td><td>{_fmt_num(t.reward)}</td><td>{esc(t.response_length)}</td><td><pre>{esc(t.completion)}</pre></td></tr>")
    return "".join(rows) + "</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px} .muted{color:#777}
table{border-collapse:collapse;font-size:0.9em;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5} pre{margin:0;white-space:pre-wrap;word-break:break-all;max-width:700px}
.tag{color:#fff;border-radius:3px;padding:1px 6px;font-size:0.85em} .kv td:first-child{font-weight:600}
"""

# Records script errors into the page so a headless browser test can find them in the DOM.
_ERROR_HOOK = """
window.__rftfmErrors=[];
window.addEventListener('error',function(e){window.__rftfmErrors.push(String(e.message));});
window.addEventListener('unhandledrejection',function(e){window.__rftfmErrors.push(String(e.reason));});
"""

_RENDER = """
(function(){
  var figs = JSON.parse(document.getElementById('rftfm-figures').textContent);
  var done = 0;
  figs.forEach(function(f){
    try { Plotly.newPlot(f.div, f.fig.data, f.fig.layout, {responsive:true, displaylogo:false}); done++; }
    catch(err){ window.__rftfmErrors.push(String(err)); }
  });
  var status = document.getElementById('rftfm-status');
  status.setAttribute('data-rendered', String(done));
  status.setAttribute('data-errors', String(window.__rftfmErrors.length));
  status.textContent = window.__rftfmErrors.length ? 'RFTFM-JS-ERRORS: ' + window.__rftfmErrors.join(' | ') : 'RFTFM-RENDERED ' + done;
})();
"""


def _section(build: Any, *args: Any) -> str:
    """One section's HTML; an unexpected payload shape costs that section, never the report."""
    try:
        return build(*args)
    except Exception as exc:
        return f"<p class='muted'>This section could not be built ({esc(type(exc).__name__)}: {esc(exc)}).</p>"


def build_report(
    run_id: str,
    events: Sequence[Event],
    incidents: Sequence[dict[str, Any]] = (),
    source: str | None = None,
    stats: Any = None,
    note: str | None = None,
    ground_truth: dict[str, Any] | None = None,
) -> str:
    """The report as one HTML string. ``ground_truth``: a benchmark run's RunInfo dict (labels, shown as such)."""
    records = [s for s, _ in events]
    incidents = sorted(incidents, key=lambda e: (e.get("time") or 0, e.get("step") or 0))
    figures: list[tuple[str, go.Figure]] = []
    onset = None
    if ground_truth and ground_truth.get("control_or_fault") == "fault":
        onset = ground_truth.get("onset_step") or 1
    main = metric_figure(records, incidents, STEP_METRICS, "training signals", onset_step=onset)
    if main is not None:
        figures.append(("fig-metrics", main))
    trajs = trajectory_figure(events, incidents, onset)
    if trajs is not None:
        figures.append(("fig-trajectories", trajs))
    extra_names = sorted({k for r in records for k in r.extra})
    extra = metric_figure(records, incidents, extra_names[:MAX_EXTRA_PLOTS], "other logged metrics", extra=True)
    if extra is not None:
        figures.append(("fig-extra", extra))

    alarms = [e for e in incidents if e["kind"] == "alarm"]
    kinds = {k: sum(e["kind"] == k for e in incidents) for k in ("alarm", "diagnosis", "action", "outcome", "error")}
    summary_rows = [
        ("run", run_id),
        ("source", source or ""),
        ("format", getattr(stats, "format", None) or ""),
        ("steps", f"{len(records)} ({records[0].step}–{records[-1].step})" if records else "0"),
        ("trajectories", sum(len(t) for _, t in events)),
        ("first alarm", alarms[0]["step"] if alarms else "none"),
        ("incident events", ", ".join(f"{v} {k}" for k, v in kinds.items() if v) or "none"),
    ]
    if ground_truth:
        kind = ground_truth.get("control_or_fault")
        label = (f"fault {ground_truth.get('fault_type')} ({ground_truth.get('fault_family')}, {ground_truth.get('fault_strength')}) from step {onset}"
                 if kind == "fault" else f"{kind} run (no fault injected)")
        summary_rows.append(("benchmark label (evaluation only)", label))
    if stats is not None and getattr(stats, "malformed_lines", 0):
        summary_rows.append(("malformed lines skipped", stats.malformed_lines))
    present = [m for m in STEP_METRICS if any(getattr(r, m) is not None for r in records)]
    missing = [m for m in STEP_METRICS if m not in present]
    if missing:
        summary_rows.append(("signals not in this log", ", ".join(missing)))
    summary = "<table class='kv'>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary_rows) + "</table>"
    if note:
        summary += f"<p class='muted'>{esc(note)}</p>"

    fig_payload = [{"div": div, "fig": json.loads(fig.to_json())} for div, fig in figures]
    divs = {div: f"<div id='{div}'></div>" for div, _ in figures}
    extras_list = ", ".join(esc(n) for n in extra_names) if extra_names else "none"
    body = [
        f"<h1>rftfm report: {esc(run_id)}</h1>",
        f"<p class='muted'>generated {esc(_fmt_time(datetime.now(tz=timezone.utc).timestamp()))}</p>",
        "<div id='rftfm-status' class='muted' data-rendered='0'>rendering…</div>",
        "<h2>summary</h2>", summary,
        "<h2>training signals</h2>", divs.get("fig-metrics", "<p class='muted'>No step metrics.</p>"),
        "<h2>trajectory distributions</h2>", divs.get("fig-trajectories", "<p class='muted'>This log has no per-trajectory records.</p>"),
        "<h2>diagnosis</h2>", _section(diagnosis_html, incidents),
        "<h2>sample completions</h2>", _section(completions_html, events, incidents),
        "<h2>incident timeline</h2>", _section(timeline_html, incidents),
        "<h2>other logged metrics</h2>", f"<p class='muted'>{extras_list}</p>", divs.get("fig-extra", ""),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>rftfm report: {esc(run_id)}</title><style>{_CSS}</style>"
        f"<script>{_ERROR_HOOK}</script>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        + "".join(body)
        + f"<script type='application/json' id='rftfm-figures'>{_script_json(fig_payload)}</script>"
        + f"<script>{_RENDER}</script></body></html>"
    )


def write_report(path: str | Path, run_id: str, events: Sequence[Event], incidents: Sequence[dict[str, Any]] = (), **kwargs: Any) -> Path:
    """Write :func:`build_report` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(run_id, events, incidents, **kwargs), encoding="utf-8", errors="replace")  # lone surrogates in log text
    return path
