"""How detection degrades when a framework's log lacks signals (the table in docs/integrations).

For each log format, the benchmark's features are masked to what that format's adapter can
fill (:func:`rftfm.io.adapters.coverage`; TRL / verl / plain JSONL metric logs carry no
per-trajectory records, so every trajectory feature is missing), and the same detector scores
the held-out runs. Reported per format: detection rate of faulty runs (an alarm at or after
the fault onset), median delay in steps, the false-alarm rate of un-injected runs
(controls and normal runs with any alarm), and the diagnoser's top-1 fault type and family at
that first alarm.

    python scripts/watch_degradation.py /work/data/full --markdown docs/results/watch_degradation.md --json out.json

The detector is ``--detector FILE``, else the packaged default, else one fitted here on the
normal runs of the training split (said in the output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import polars as pl

from rftfm.bench.splits import split_runs
from rftfm.fm.detect import Detector
from rftfm.fm.features import FEATURES, STEP_FEATURES, TRAJECTORY_FEATURES, features_frame
from rftfm.io.adapters import coverage
from rftfm.io.loader import load_benchmark

PROFILES = {
    "openrlhf / RFT-FaultBench layout (all signals)": None,
    "jsonl (all step metrics, no trajectories)": "jsonl",
    "trl (GRPO log history)": "trl",
    "verl (metric keys)": "verl",
}


def masked(features: pl.DataFrame, fmt: str | None) -> pl.DataFrame:
    if fmt is None:
        return features
    have = coverage(fmt)
    drop = list(TRAJECTORY_FEATURES) + [f for f in STEP_FEATURES if not have.get(f, False)]
    return features.with_columns(*[pl.lit(None, dtype=pl.Float64).alias(c) for c in drop])


def evaluate(detector: Detector, runs: pl.DataFrame, features: pl.DataFrame, diagnoser=None) -> dict:
    by_run = {rid: frame for (rid,), frame in features.partition_by("run_id", as_dict=True).items()}
    detected, delays, faulty, clean, false_alarms = 0, [], 0, 0, 0
    type_hits, family_hits, diagnosed = 0, 0, 0
    per_family: dict[str, list[int]] = {}
    for row in runs.iter_rows(named=True):
        frame = by_run.get(row["run_id"])
        if frame is None:
            continue
        alarms = detector.score_run(frame, row.get("task_group"), row.get("model_size"))
        if row["control_or_fault"] == "fault":
            faulty += 1
            onset = row.get("onset_step") or 1
            hits = [a.step for a in alarms if a.step >= onset]
            family = per_family.setdefault(row["fault_family"], [0, 0])
            family[1] += 1
            if hits:
                detected += 1
                family[0] += 1
                delays.append(hits[0] - onset)
                if diagnoser is not None:  # diagnosis at the first alarm after onset, as watch does it
                    d = diagnoser.diagnose(
                        frame.filter(pl.col("step") <= hits[0]),
                        row["run_id"],
                        hits[0],
                        row.get("task_group"),
                        row.get("model_size"),
                    )
                    top = d.ranked[0] if d.ranked else None
                    diagnosed += 1
                    type_hits += bool(top and top.fault_type == row["fault_type"])
                    family_hits += bool(top and top.family == row["fault_family"])
        else:
            clean += 1
            false_alarms += bool(alarms)
    return {
        "faulty_runs": faulty,
        "detection_rate": detected / faulty if faulty else None,
        "median_delay_steps": statistics.median(delays) if delays else None,
        "mean_delay_steps": statistics.fmean(delays) if delays else None,
        "clean_runs": clean,
        "false_alarm_run_rate": false_alarms / clean if clean else None,
        "detection_rate_by_family": {k: v[0] / v[1] for k, v in sorted(per_family.items())},
        "diagnosis_top1_type": type_hits / diagnosed if diagnosed else None,
        "diagnosis_top1_family": family_hits / diagnosed if diagnosed else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", type=Path)
    parser.add_argument("--detector", type=Path)
    parser.add_argument("--diagnoser", type=Path)
    parser.add_argument("--split", default="seed")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)

    bench = load_benchmark(args.bench)
    features = features_frame(bench.steps, bench.trajectories)
    train, test = split_runs(bench.runs, args.split)
    if args.detector:
        detector, source = Detector.load(args.detector), str(args.detector)
    else:
        try:
            detector, source = Detector.load_default(), "packaged default"
        except Exception:  # no packaged artifact (or one for another feature list): fit one on the training split
            detector = Detector().fit(train, features.filter(pl.col("run_id").is_in(train["run_id"].to_list())))
            source = f"fitted by this script on the {train.height} training-split runs ({args.split} split)"
    try:
        from rftfm.fm.diagnose import Diagnoser

        diagnoser = Diagnoser.load(args.diagnoser) if args.diagnoser else Diagnoser.load_default()
        diagnoser_source = str(args.diagnoser) if args.diagnoser else "packaged default"
    except Exception as exc:  # no diagnoser: detection columns only
        diagnoser, diagnoser_source = None, f"none ({type(exc).__name__})"
    results = {name: evaluate(detector, test, masked(features, fmt), diagnoser) for name, fmt in PROFILES.items()}
    families = sorted({f for r in results.values() for f in r["detection_rate_by_family"]})
    payload = {
        "benchmark": str(args.bench),
        "runs": bench.runs.height,
        "test_runs": test.height,
        "split": args.split,
        "detector": source,
        "diagnoser": diagnoser_source,
        "features": len(FEATURES),
        "results": results,
    }
    print(json.dumps(payload, indent=1))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")

    def delay(r):
        if r["median_delay_steps"] is None:
            return "–"
        return f"{r['median_delay_steps']:g} / {r['mean_delay_steps']:.2f}"

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    lines = [
        f"Benchmark `{args.bench}`: {bench.runs.height} runs, {test.height} held out ({args.split} split); "
        f"detector: {source}; diagnoser: {diagnoser_source}. "
        "Diagnosis: top-1 at the first alarm after onset, over detected faulty runs.",
        "",
        "| log format | faulty runs detected (%) | median / mean delay (steps) | "
        "un-injected runs with a false alarm (%) | "
        "diagnosis top-1 type (%) | diagnosis top-1 family (%) | "
        + " | ".join(f"{f} detected (%)" for f in families)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(families),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {pct(r['detection_rate'])} | {delay(r)} | "
            f"{pct(r['false_alarm_run_rate'])} | {pct(r['diagnosis_top1_type'])} | {pct(r['diagnosis_top1_family'])} | "
            + " | ".join(pct(r["detection_rate_by_family"].get(f)) for f in families)
            + " |"
        )
    lines += ["", f"Generated by `python scripts/watch_degradation.py {args.bench} --markdown {args.markdown}`."]
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
