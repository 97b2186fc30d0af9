"""What the schedule rule (:mod:`rftfm.fm.schedule`) sees in a benchmark's logged learning rates.

    python benchmarks/schedule_rule.py --data /work/data/half [--markdown docs/results/schedule-rule.md]

Healthy records are every record of normal and control runs and the records of faulty runs before their fault
acts (``fault_active``). For each record with two ratios before it: the largest rise after a record that did not rise,
the largest fall after a record that fell gently, the rule's alarms on healthy runs, and per fault type the largest
jump at or after onset and how many faulty runs the rule alarms at or after onset (mid-run onsets apart, as the rule
judges nothing before the third record), with the largest jump the rule judged there. The figures behind the
constants of the rule's module docstring.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import polars as pl

from rftfm.fm.schedule import FLAT, GENTLE, JUMP, ScheduleState, log_ratio
from rftfm.io.loader import load_benchmark


def _pairs(lrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ratio, previous ratio) of each record (NaN where not defined), as the rule reads them."""
    ratio, previous = np.full(lrs.size, np.nan), np.full(lrs.size, np.nan)
    for i in range(1, lrs.size):
        ratio[i] = log_ratio(float(lrs[i]), float(lrs[i - 1]))
        previous[i] = ratio[i - 1]
    return ratio, previous


def measure(root: str) -> dict:
    bench = load_benchmark(root, trajectories=False)
    steps = bench.steps.sort("run_id", "step")
    runs = {r["run_id"]: r for r in bench.runs.iter_rows(named=True)}
    rise, fall, healthy_runs, healthy_alarmed, per_type = -math.inf, -math.inf, 0, 0, {}
    for (run_id,), frame in steps.group_by(["run_id"], maintain_order=True):
        meta = runs.get(run_id, {})
        lrs = frame["learning_rate"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        active = frame["fault_active"].fill_null(False).to_numpy() if "fault_active" in frame.columns else None
        injected = meta.get("control_or_fault") == "fault"
        healthy = np.ones(lrs.size, bool) if not injected or active is None else ~active.astype(bool)
        ratio, previous = _pairs(lrs)
        with np.errstate(invalid="ignore"):
            ok = healthy & np.isfinite(ratio) & np.isfinite(previous)
            rise = max(rise, float(np.max(ratio[ok & (previous <= math.log(FLAT))], initial=-math.inf)))
            fall = max(fall, float(np.max(-ratio[ok & (previous >= -math.log(GENTLE))], initial=-math.inf)))
        state = ScheduleState()
        units = np.array([state.advance(float(v)) for v in lrs])
        alarmed = np.abs(units) > 1.0
        if not injected:
            healthy_runs += 1
            healthy_alarmed += bool(alarmed.any())
            continue
        onset = int(meta.get("onset_step") or 1)
        after = frame["step"].to_numpy() >= onset
        row = per_type.setdefault((meta.get("fault_type"), "mid-run" if onset > 1 else "step 1"), [0, 0, 0.0, None])
        row[0] += 1
        row[1] += bool((alarmed & after).any()) and not bool((alarmed & ~after).any())
        largest = units[after][np.argmax(np.abs(units[after]))] if after.any() else 0.0
        row[2] = largest if abs(largest) > abs(row[2]) else row[2]  # signed: a fall is negative
        if (alarmed & after).any():  # the smallest jump that alarmed, in size
            row[3] = min(abs(largest), row[3] if row[3] is not None else math.inf)
    return {
        "healthy_rise": math.exp(rise),
        "healthy_fall": math.exp(fall),
        "healthy_runs": healthy_runs,
        "healthy_alarmed": healthy_alarmed,
        "per_type": per_type,
    }


def markdown(m: dict, root: str) -> str:
    lines = [
        f"Written by `python benchmarks/schedule_rule.py --data {root} --markdown docs/results/schedule-rule.md`.",
        "",
        f"- Rule: a jump of more than {JUMP:g} fold after a record that rose at most {FLAT:g} fold (a rise) or fell at "
        f"most {GENTLE:g} fold (a fall).",
        f"- Healthy records: largest rise after a record that did not rise **x{m['healthy_rise']:.3g}**; largest fall "
        f"after a gentle one **/{m['healthy_fall']:.3g}**.",
        f"- Normal and control runs the rule alarms: **{m['healthy_alarmed']} of {m['healthy_runs']}**.",
        "",
        "| fault type | onset | runs | alarmed at or after onset (none before) | largest jump judged after onset | "
        "smallest largest-jump of a run that alarmed |",
        "|---|---|---|---|---|---|",
    ]
    judged = {f for (f, _), (_, hit, units, _) in m["per_type"].items() if hit or abs(units) > 0.5}
    rows = sorted(m["per_type"].items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))
    for (fault, onset), (n, hit, units, least) in rows:
        if fault in judged:
            sign = "x" if units >= 0 else "/"
            smallest = "–" if least is None else f"{sign}{JUMP ** least:.3g}"
            lines.append(f"| {fault} | {onset} | {n} | {hit} | {sign}{JUMP ** abs(units):.3g} | {smallest} |")
    quiet = sorted(str(f) for f in {f for f, _ in m["per_type"]} - judged)
    lines += ["", f"No alarm and no jump above half the limit in the runs of: {', '.join(quiet)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    text = markdown(measure(args.data), args.data)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
