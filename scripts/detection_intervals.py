"""Bootstrap intervals for a detection evaluation's headline: RFT-FM's mid-run average F1 (protocol B) and its share of
normal and control rows alarmed, per tier, resampling runs.

    python scripts/detection_intervals.py docs/results/detection-config.json --data /work/data/h31 [--tiers a,bc]
    python scripts/detection_intervals.py --data DIR NEW.json --against OLD.json   # a change, paired by run

A run appears in several folds (a task fold, a family fold, a size fold, ...); it is resampled with all its fold rows,
so the interval is over the sample of runs, not over rows that share a run. The point estimate is recomputed from the
JSON's rows the way ``rftfm bench evaluate detection`` computes it and checked against the figure the JSON holds.
Two evaluations of the same code on two generations of the benchmark (docs/detection.md, stop 43) differ by about
what these intervals span.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rftfm.bench.eval_detection import RFTFM
from rftfm.faults.taxonomy import FAMILIES, STRENGTHS, group_dir


def run_groups(data: Path | None, result: dict) -> dict[str, str]:
    """Each run's group directory (``rf_hard_fault``, ``normal``, ...): from the result's rows where they carry it
    (evaluations since stop 43), else from the runs' ``run_info.json`` under ``data``."""
    rows = [r for tier in result["methods"].values() for r in tier[RFTFM]["runs"]]
    if all(r.get("group") for r in rows):
        return {r["run_id"]: r["group"] for r in rows}
    if data is None:
        raise SystemExit("these rows do not name their run's group: give --data, the benchmark they were run on")
    return {
        info["run_id"]: info["group"]
        for info in (json.loads(p.read_text(encoding="utf-8")) for p in data.glob("*/*/run_info.json"))
    }


def contributions(rows: list[dict], groups: dict[str, str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per run (summed over its fold rows) the counts protocol B's table adds up, for mid-run onsets: per family x
    setting its faults' rows, detections and pre-onset alarms and its controls' alarmed rows; the normal runs' alarmed
    rows (false positives of every family); and every normal or control row and its alarm (the healthy share)."""
    runs = sorted({r["run_id"] for r in rows})
    index = {r: i for i, r in enumerate(runs)}
    cells = [group_dir(f, s) for f in FAMILIES for s in STRENGTHS]
    col = {g: k for k, g in enumerate(cells)}
    shape = (len(runs), len(cells))
    out = {name: np.zeros(shape) for name in ("faults", "detected", "pre_onset", "controls_alarmed")}
    out |= {name: np.zeros(len(runs)) for name in ("normal_alarmed", "healthy_rows", "healthy_alarmed")}
    for r in rows:
        i, alarmed = index[r["run_id"]], r["first_alarm"] is not None
        if r["kind"] != "fault":
            out["healthy_rows"][i] += 1
            out["healthy_alarmed"][i] += alarmed
        if r["kind"] == "normal":
            out["normal_alarmed"][i] += alarmed
        elif r["kind"] == "control" and groups[r["run_id"]] in col:
            out["controls_alarmed"][i, col[groups[r["run_id"]]]] += alarmed
        elif r["kind"] == "fault" and (r["onset_step"] or 1) > 1:
            k = col[groups[r["run_id"]]]
            out["faults"][i, k] += 1
            out["detected"][i, k] += r["detected"]
            out["pre_onset"][i, k] += r["pre_onset_alarm"]
    return cells, out


def headline(w: np.ndarray, cells: list[str], c: dict[str, np.ndarray]) -> tuple[dict[str, float], float]:
    """Average F1 over families per setting (as ``protocol_table``) and the % of healthy rows alarmed, for run
    weights ``w`` (R,) or (B, R)."""
    faults, tp = w @ c["faults"], w @ c["detected"]
    fp = (w @ c["normal_alarmed"])[..., None] + w @ c["pre_onset"] + w @ c["controls_alarmed"]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(faults > 0, tp / faults, 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0) * 100
    present = c["faults"].sum(axis=0) > 0  # a cell with no mid-run fault in the sample at all is not in the table
    avg = {}
    for s in STRENGTHS:
        keep = [k for k, g in enumerate(cells) if g.endswith(f"_{s}_fault") and present[k]]
        avg[s] = f1[..., keep].mean(axis=-1)
    healthy = 100 * (w @ c["healthy_alarmed"]) / (w @ c["healthy_rows"])
    return avg, healthy


def checked(result: dict, tier: str, groups: dict[str, str]) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """The tier's RFT-FM contributions (:func:`contributions`) and run ids, after checking that they give back the
    JSON's own F1."""
    rftfm = result["methods"][tier][RFTFM]
    cells, c = contributions(rftfm["runs"], groups)
    point, _ = headline(np.ones(c["healthy_rows"].size), cells, c)
    for s, stored in rftfm["mid_run"]["B"]["avg_f1"].items():
        if stored is not None and abs(float(point[s]) - stored) > 1e-6:
            raise SystemExit(f"tier {tier}: recomputed F1 {s} {float(point[s]):.3f} != stored {stored:.3f}")
    return cells, c, sorted({r["run_id"] for r in rftfm["runs"]})


def interval(values: np.ndarray) -> str:
    low, high = np.quantile(values, [0.025, 0.975])
    return f"({low:.1f} to {high:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="an evaluation's --json")
    parser.add_argument("--data", type=Path, help="the benchmark it was run on (run groups, for older results)")
    parser.add_argument("--against", type=Path, help="an earlier evaluation of the same runs: the paired difference")
    parser.add_argument("--tiers", default=None, help="comma-separated (default: every tier in the file)")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = json.loads(args.result.read_text(encoding="utf-8"))
    against = json.loads(args.against.read_text(encoding="utf-8")) if args.against else None
    groups = (
        run_groups(args.data, result)
        if against is None
        else {**run_groups(args.data, against), **run_groups(args.data, result)}
    )
    tiers = args.tiers.split(",") if args.tiers else list(result["methods"])
    print(
        f"{args.result}: RFT-FM, mid-run onsets, protocol B; 95 % intervals over {args.reps} resamples of runs"
        + (f"; minus {args.against} on the same resamples" if against else "")
    )
    for tier in tiers:
        cells, c, runs = checked(result, tier, groups)
        rng = np.random.default_rng(args.seed)
        w = rng.multinomial(len(runs), np.full(len(runs), 1.0 / len(runs)), size=args.reps).astype(float)
        point, healthy = headline(np.ones(len(runs)), cells, c)
        boot, boot_healthy = headline(w, cells, c)
        line = [f"F1 {s} {float(point[s]):.1f} {interval(boot[s])}" for s in STRENGTHS]
        line.append(f"healthy rows alarmed {float(healthy):.1f} % {interval(boot_healthy)}")
        if against is not None:
            cells_0, c_0, runs_0 = checked(against, tier, groups)
            if runs_0 != runs:
                raise SystemExit(f"tier {tier}: the two files hold different runs")
            point_0, healthy_0 = headline(np.ones(len(runs)), cells_0, c_0)
            boot_0, boot_healthy_0 = headline(w, cells_0, c_0)
            line += [
                f"difference F1 {s} {float(point[s] - point_0[s]):+.1f} {interval(boot[s] - boot_0[s])}"
                for s in STRENGTHS
            ]
            line.append(f"healthy {float(healthy - healthy_0):+.1f} {interval(boot_healthy - boot_healthy_0)}")
        print(f"tier {tier} ({len(runs)} runs): " + ", ".join(line))


if __name__ == "__main__":
    main()
