"""How far do the run's-own-history statistics get on their own? (docs/detection.md, "Where this stands")

For every run of a benchmark, the configuration-free tracker (`rftfm.fm.dynamics`, with the prior noise of the
given detector artifact) gives per step and signal the innovation z, the CUSUM, the drift from the slow baseline
and the change since warm-up. Each statistic, in units of its healthy 99th percentile per signal, is turned into a
run-level detector (the largest of the signals, or the mean of the three largest) whose threshold lets a given share
of the normal and control runs alarm. The threshold is set on the same runs it is scored on (in sample), which
favours these statistics: the recall they reach is an upper bound on what they give without a learned model.
A faulty run with a mid-run onset counts as detected when it alarms after its onset and not before.

    python scripts/unsupervised_ceiling.py --data /work/data/half --markdown docs/results/unsupervised-ceiling.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from rftfm.faults.taxonomy import FAMILIES, STRENGTHS
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.detect import TIERS, UNSURPRISING, Detector
from rftfm.fm.features import features_frame
from rftfm.io.loader import load_benchmark

STATISTICS = {
    "innovation z": ("z",),
    "CUSUM": ("cusum_up", "cusum_down"),
    "drift from the slow baseline": ("dev_slow",),
    "change since warm-up": ("change0",),
}


def per_signal_units(x: np.ndarray, names: list[str], kinds: tuple[str, ...], signals: list[str],
                     present: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """(R, S, signals) |statistic| / its 99th percentile over the normal runs' present records."""
    out = []
    for s in signals:
        cols = [names.index(f"{s}:{k}") for k in kinds if f"{s}:{k}" in names]
        v = np.where(present, np.nanmax(np.abs(np.nan_to_num(x[..., cols])), axis=-1), 0.0)
        out.append(v / max(float(np.quantile(v[normal][present[normal]], 0.99)), 1e-9))
    return np.stack(out, axis=-1)


def recall_table(score: np.ndarray, runs: pl.DataFrame, steps: np.ndarray, normal: np.ndarray,
                 rate: float) -> dict[tuple[str, str], tuple[int, int]]:
    """(family, strength) -> (detected, mid-run faulty runs) at the threshold ``rate`` of normal runs exceed."""
    present = steps > 0
    s = np.where(present, score, -np.inf)
    threshold = float(np.quantile(s[normal].max(axis=1), 1 - rate))
    onset = runs["onset_step"].fill_null(1).to_numpy()
    out = {}
    for family in FAMILIES:
        for strength in STRENGTHS:
            idx = np.flatnonzero(
                ((runs["control_or_fault"] == "fault") & (runs["fault_family"] == family)
                 & (runs["fault_strength"] == strength)).to_numpy() & (onset > 1)
            )
            hit = sum(
                s[i][present[i] & (steps[i] < onset[i])].max(initial=-np.inf) <= threshold
                < s[i][present[i] & (steps[i] >= onset[i])].max(initial=-np.inf)
                for i in idx
            )
            out[(family, strength)] = (int(hit), int(idx.size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--detector", default=None, help="artifact whose tracker prior is used (default: shipped)")
    parser.add_argument("--tier", default="a")
    parser.add_argument("--rate", type=float, default=0.02, help="share of normal runs allowed to alarm")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    bench = load_benchmark(args.data)
    features = features_frame(bench.steps, bench.trajectories)
    runs = bench.runs.filter(pl.col("run_id").is_in(features["run_id"].unique().to_list()))
    detector = Detector.load(args.detector) if args.detector else Detector.load_default()
    raw, steps = runs_cube(features, runs["run_id"].to_list())
    raw[..., [i for i, s in enumerate(CUBE_SIGNALS) if s not in TIERS[args.tier]]] = np.nan
    x = detector.tracker.run_cube(np.where(steps[..., None] > 0, raw, np.nan))
    names = list(detector.tracker.names)
    present = steps > 0
    normal = runs["control_or_fault"].is_in(["normal", "control"]).to_numpy()
    signals = [s for s in TIERS[args.tier] if s not in UNSURPRISING]
    rows, loudest = [], []
    for label, kinds in STATISTICS.items():
        per_signal = per_signal_units(x, names, kinds, signals, present, normal)
        if label == "CUSUM":  # what sets the bar: the signal and run behind the largest healthy-run values
            peak = np.where(present[..., None], per_signal, 0.0)
            ranked = [i for i in np.argsort(-peak.max(axis=(1, 2))) if normal[i]]
            for i in ranked[:10]:
                step, sig = np.unravel_index(np.argmax(peak[i]), peak[i].shape)
                loudest.append((runs["run_id"][int(i)], int(steps[i, step]), signals[sig], float(peak[i].max())))
        units = np.sort(per_signal, axis=-1)
        for combine, score in (("largest signal", units[..., -1]), ("mean of the 3 largest", units[..., -3:].mean(-1))):
            table = recall_table(score, runs, steps, normal, args.rate)
            avg = {st: 100 * np.mean([h / n for (f, s), (h, n) in table.items() if s == st and n]) for st in STRENGTHS}
            rows.append((f"{label}, {combine}", avg, table))
    kinds = runs.group_by("control_or_fault").len().sort("control_or_fault").rows()
    lines = [
        f"Written by `python scripts/unsupervised_ceiling.py --data {args.data} --tier {args.tier} --rate {args.rate}"
        + (f" --detector {args.detector}" if args.detector else "") + "`.",
        "",
        f"{runs.height} runs ({', '.join(f'{n} {k}' for k, n in kinds)}); tier {args.tier}; threshold: "
        f"{100 * args.rate:g} % of normal and control runs alarm, set in sample. Recall in % of the faulty runs "
        "with a mid-run onset, averaged over families; per family: detected / runs.",
        "",
        "| statistic | recall easy | recall hard | "
        + " | ".join(f"{f} {s}" for f in FAMILIES for s in STRENGTHS)
        + " |",
        "|---|---|---|" + "---|" * (len(FAMILIES) * len(STRENGTHS)),
    ]
    for label, avg, table in rows:
        lines.append(
            f"| {label} | {avg['easy']:.1f} | {avg['hard']:.1f} | "
            + " | ".join(f"{table[(f, s)][0]}/{table[(f, s)][1]}" for f in FAMILIES for s in STRENGTHS) + " |"
        )
    lines += [
        "",
        "The ten normal or control runs with the largest CUSUM (in healthy 99th-percentile units), and where:",
        "",
        "| run | step | signal | CUSUM |",
        "|---|---|---|---|",
        *(f"| {run} | {step} | {sig} | {value:.1f} |" for run, step, sig, value in loudest),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
