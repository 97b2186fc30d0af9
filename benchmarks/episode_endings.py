"""How alarm episodes end on benchmark runs: does "the run came back" / "settled" tell a fault from a false alarm?

    python benchmarks/episode_endings.py --data DIR [--tier a|b|c|bc] [--markdown FILE]

Every run of ``DIR`` (the published layout) is watched as ``rftfm watch`` would (``RunMonitor`` with the packaged
detector, no diagnoser), given only what its tier logs (a: step metrics; b: and per-trajectory records; c: and
held-out accuracy). Each episode is counted by what raised it -- a fault (it started at or after the injected onset;
every injected fault stays on to the end of its run), a false alarm in a healthy run (normal or control), or a false
alarm before a faulty run's onset -- and by how it ended: still open at the end of the log, cleared with the run back
at its earlier level, cleared with the run settled away from it (``Episode.lasting``), or cleared unjudged. The rule
is :func:`rftfm.fm.monitor.lasting_deviations`; nothing here is fitted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import get_args

from rftfm.fm.monitor import EpisodeEnd, RunMonitor, how_it_ended, load_detector
from rftfm.io.adapters import read_log

ENDINGS = get_args(EpisodeEnd)  # open, came back, settled, not judged
SOURCES = ("fault", "healthy run", "before onset")


def tier_events(events: list, tier: str) -> list:
    """What a run of ``tier`` logs: trajectories only in b / bc, held-out accuracy only in c / bc."""
    keep_trajectories, keep_accuracy = "b" in tier, "c" in tier
    return [
        (record if keep_accuracy else record.model_copy(update={"eval_accuracy": None}),
         trajectories if keep_trajectories else [])
        for record, trajectories in events
    ]


def watch_run(run_dir: Path, detector, tier: str) -> tuple[dict, list]:
    info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    events, _ = read_log(run_dir)
    monitor = RunMonitor(info["run_id"], detector)
    monitor.observe_batch(tier_events(events, tier))
    monitor.finish()
    return info, monitor.result.episodes


def source(info: dict, start_step: int) -> str:
    if info.get("control_or_fault") != "fault":
        return SOURCES[1]
    return SOURCES[0] if start_step >= (info.get("onset_step") or 1) else SOURCES[2]


def markdown(counts: Counter, runs: int, data: str, tier: str, seconds: float) -> str:
    lines = [
        f"Written by `python benchmarks/episode_endings.py --data {data} --tier {tier}` ({runs} runs, packaged "
        f"detector, tier {tier}, {seconds:.0f} s).",
        "",
        "| episodes raised by | " + " | ".join(ENDINGS) + " | settled, of the judged cleared |",
        "|---|" + "---|" * (len(ENDINGS) + 1),
    ]
    for src in SOURCES:
        row = [counts[src, e] for e in ENDINGS]
        settled, judged = counts[src, "settled"], counts[src, "came back"] + counts[src, "settled"]
        share = f"{100 * settled / judged:.1f} % of {judged}" if judged else "–"
        lines.append(f"| {src} | " + " | ".join(map(str, row)) + f" | {share} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--tier", default="a", choices=("a", "b", "c", "bc"))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    detector, why = load_detector()
    if detector is None:
        raise SystemExit(why)
    start, counts = time.perf_counter(), Counter()
    run_dirs = sorted(p.parent for p in args.data.glob("*/*/run_info.json"))
    for run_dir in run_dirs:
        info, episodes = watch_run(run_dir, detector, args.tier)
        for episode in episodes:
            counts[source(info, episode.start_step), how_it_ended(episode)] += 1
    table = markdown(counts, len(run_dirs), str(args.data), args.tier, time.perf_counter() - start)
    print(table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
