"""Parse, watch and report every real log in ../shared/real-logs/ and write the table of what happened.

    python benchmarks/real_logs.py [--markdown docs/integrations/real-logs.md]

For each log: what ``--format auto`` read it as, steps parsed, alarmed steps, alarm episodes,
first alarm step, the first episode's diagnosis, and the time to parse, watch (packaged detector
and diagnoser, loaded once beforehand) and report it (page size, plotly.js shared beside it).
The figures depend on the detector on the branch; re-run this when it changes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from long_log import REAL_LOGS

from rftfm.fm.incidents import IncidentStore
from rftfm.fm.monitor import RunMonitor, how_it_ended, load_detector, load_diagnoser
from rftfm.io.adapters import read_log
from rftfm.report.html import write_report

LOGS = (
    "trl/IITD_AAIPL_outputs",
    "trl/trl_DAPO_20251022_120531_run_terminal.md",
    "verl/aopd_i80f2v90.output.log",
    "verl/aopd_ry3hgbx5.output.log",
    "verl/dstack_verl_demo.log",
    "verl/verl_docs_quickstart.rst",
    "verl/aopd_dq9a4cex.sft.output.log",
)
#: What the README says the run's own metrics show (not a published label).
README = {
    "trl/IITD_AAIPL_outputs": "length cap starves the run (~90 % clipped) from the first entry",
    "trl/trl_DAPO_20251022_120531_run_terminal.md": (
        "collapse from the 2nd entry (step 20): length 53 -> 2.6, zero-std groups -> 1"
    ),
    "verl/aopd_i80f2v90.output.log": "collapse over steps 3-12, stays collapsed",
    "verl/aopd_ry3hgbx5.output.log": "healthy",
    "verl/dstack_verl_demo.log": "healthy, converged",
    "verl/verl_docs_quickstart.rst": "two example lines",
    "verl/aopd_dq9a4cex.sft.output.log": "SFT, not an RL log",
}


def one_log(name: str, detector, diagnoser, out: Path) -> dict:
    start = time.perf_counter()
    events, stats = read_log(REAL_LOGS / name)
    parsed = time.perf_counter()
    row = {"log": name, "read as": stats.described, "steps": len(events), "shows (README)": README[name]}
    if not events:
        row.update({"note": stats.no_steps_reason(Path(name).name), "parse s": parsed - start})
        return row
    with IncidentStore(":memory:") as store:
        monitor = RunMonitor("real", detector, diagnoser, store)
        for record, trajectories in events:
            monitor.observe(record, trajectories)
        monitor.finish()
        incidents = store.events(run_id="real")
    watched = time.perf_counter()
    page = write_report(out / (Path(name).name + ".html"), "real", events, incidents, stats=stats, inline_js=False)
    done = time.perf_counter()
    result = monitor.result
    first = result.episodes[0] if result.episodes else None
    top = first.diagnosis.top if first is not None and first.diagnosis is not None else None
    row.update(
        {
            "alarmed steps": result.alarm_count,
            "episodes": result.episode_count,
            "first alarm step": result.first_alarm_step,
            "first episode's diagnosis": (top.fault_type if top else "unknown")
            if first is not None and first.diagnosis
            else "–",
            "first episode ended": _ending(first),
            "parse s": parsed - start,
            "watch s": watched - parsed,
            "report s": done - watched,
            "page MB": page.stat().st_size / 1e6,
        }
    )
    return row


def _ending(episode) -> str:
    """How an episode ended, in a table cell (with the signals that stayed away when it settled)."""
    if episode is None:
        return "–"
    end = how_it_ended(episode)
    return f"{end}: " + ", ".join(ev.signal for ev in episode.lasting[:3]) if end == "settled" else end


def markdown(rows: list[dict], load_s: float, detector_name: str) -> str:
    cols = [
        "log",
        "read as",
        "steps",
        "alarmed steps",
        "episodes",
        "first alarm step",
        "first episode's diagnosis",
        "first episode ended",
        "shows (README)",
        "parse s",
        "watch s",
        "report s",
        "page MB",
    ]

    def cell(row: dict, col: str) -> str:
        value = row.get(col, "–")
        if value is None:
            return "–"
        return f"{value:.2f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = [
        "# Real logs: parsed, watched and reported",
        "",
        "Written by `python benchmarks/real_logs.py --markdown docs/integrations/real-logs.md` "
        "(from `benchmarks/`), on",
        f"every log in `../shared/real-logs/` (their README says where each comes from). Detector: {detector_name};",
        f"detector and diagnoser loaded once beforehand in {load_s:.1f} s. Times are wall seconds on a 2-core machine",
        'shared with other jobs. "shows (README)" is what the log\'s own curves show, a judgement, not a label.',
        "An episode starts at an alarm and ends after 3 logged steps without one.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, c) for c in cols) + " |")
    notes = [f"- {r['note']}." for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args()
    start = time.perf_counter()
    detector, why = load_detector()
    diagnoser, _ = load_diagnoser() if detector is not None else (None, None)
    load_s = time.perf_counter() - start
    detector_name = type(detector).__name__ + " (packaged artifact)" if detector is not None else f"none ({why})"
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_log(name, detector, diagnoser, Path(tmp)) for name in LOGS]
    text = markdown(rows, load_s, detector_name)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
