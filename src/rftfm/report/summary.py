"""What one watch of a log found, as a dict (``rftfm watch --json``) and as sentences."""

from __future__ import annotations

from typing import Any

from rftfm.fm.monitor import WatchResult
from rftfm.fm.types import Episode
from rftfm.io.parser import AdapterStats


def episode_dict(episode: Episode) -> dict[str, Any]:
    diagnosis = episode.diagnosis
    top = diagnosis.top if diagnosis is not None else None
    return {
        "start_step": episode.start_step,
        "end_step": episode.end_step,
        "alarmed_steps": episode.alarmed_steps,
        "open": episode.open,
        # cleared with signals that had not come back (the run settled at a new level): their names; [] came back;
        # None not judged
        "lasting": None if episode.lasting is None else [ev.signal for ev in episode.lasting],
        "peak_score": episode.peak_score,
        "evidence": [ev.signal for ev in episode.evidence[:5]],
        "diagnosis": None
        if diagnosis is None
        else (top.model_dump() if top is not None else {"fault_type": "unknown"}),
    }


def input_problems(stats: AdapterStats) -> list[str]:
    """Sentences about what the log lacked or held that could not be used (counted, never silent)."""
    lines = list(stats.metric_problems)
    if stats.malformed_lines:
        lines.append(f"{stats.malformed_lines} malformed line(s) skipped")
    if stats.out_of_order:
        lines.append(f"{stats.out_of_order} step(s) skipped: not after the previous step")
    if stats.cut_lines:
        lines.append(
            f"{stats.cut_lines} line(s) exactly as long as a logger's line limit: probably cut short, "
            "metrics after the cut are missing"
        )
    return lines


def watch_summary(result: WatchResult, stats: AdapterStats, source: str, exit_code: int) -> dict[str, Any]:
    """The machine-readable summary of one watch."""
    last = result.last_diagnosis
    top = last.top if last is not None else None
    return {
        "run_id": result.run_id,
        "source": source,
        "format": stats.format,
        "container": stats.container,
        "steps": result.steps,
        "trajectories": stats.trajectories,
        "alarms": result.alarm_count,  # alarmed steps
        "first_alarm_step": result.first_alarm_step,
        "alarm_steps": [a.step for a in result.alarms],  # the first KEEP_IN_MEMORY
        "episode_count": result.episode_count,
        "episodes": [episode_dict(e) for e in result.episodes],
        "diagnosis": top.model_dump() if top is not None else None,
        "diagnosis_summary": last.summary if last is not None else None,
        "metrics": stats.fields,
        "input_problems": input_problems(stats),
        "detection": result.detection,
        "malformed_lines": stats.malformed_lines,
        "non_step_lines": stats.non_step_lines,
        "non_rl_lines": stats.non_rl_lines,
        "out_of_order": stats.out_of_order,
        "cut_lines": stats.cut_lines,
        "monitor_errors": result.error_count,
        "monitor_error_messages": result.errors[:20],
        "exit_code": exit_code,
    }
