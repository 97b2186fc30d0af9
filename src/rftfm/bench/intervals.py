"""Bootstrap intervals for a detection evaluation's headline, over runs.

A run appears in several folds of the ``config`` split (a task fold, a family fold, a size fold, ...); it is resampled
with all its fold rows, so an interval is over the sample of runs, not over rows that share a run. The headline is the
mid-run average F1 of protocol B (:func:`rftfm.bench.eval_detection.protocol_table`, recomputed here from per-run
counts so that thousands of resamples cost one matrix product each) and the share of normal and control rows alarmed.
Written by hand: a clustered bootstrap of ratios of sums, as one matrix product per resample; scipy's ``bootstrap``
over run indices would call a statistic that rebuilds the table for every resample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rftfm.faults.taxonomy import FAMILIES, STRENGTHS, group_dir

CELLS = [group_dir(f, s) for f in FAMILIES for s in STRENGTHS]


def run_groups(rows: list[dict[str, Any]], data: Path | None = None) -> dict[str, str] | None:
    """Each run's group directory (``rf_hard_fault``, ``normal``, ...): from the rows where they name it (results
    since stop 43), else from the runs' ``run_info.json`` under ``data``; ``None`` when neither has it."""
    if rows and all(r.get("group") for r in rows):
        return {r["run_id"]: r["group"] for r in rows}
    if data is None:
        return None
    infos = (json.loads(p.read_text(encoding="utf-8")) for p in Path(data).glob("*/*/run_info.json"))
    return {info["run_id"]: info["group"] for info in infos}


def contributions(rows: list[dict[str, Any]], groups: dict[str, str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Run ids and, per run (summed over its fold rows), the counts protocol B's mid-run table adds up: per family x
    setting its faults' rows, detections and pre-onset alarms and its controls' alarmed rows; the normal runs'
    alarmed rows (false positives of every family); every normal or control row and whether it alarmed."""
    runs = sorted({r["run_id"] for r in rows})
    index = {r: i for i, r in enumerate(runs)}
    col = {g: k for k, g in enumerate(CELLS)}
    out = {name: np.zeros((len(runs), len(CELLS))) for name in ("faults", "detected", "pre_onset", "controls")}
    out |= {name: np.zeros(len(runs)) for name in ("normal_alarmed", "healthy_rows", "healthy_alarmed")}
    for r in rows:
        i, alarmed, cell = index[r["run_id"]], r["first_alarm"] is not None, col.get(groups[r["run_id"]])
        if r["kind"] != "fault":
            out["healthy_rows"][i] += 1
            out["healthy_alarmed"][i] += alarmed
        if r["kind"] == "normal":
            out["normal_alarmed"][i] += alarmed
        elif r["kind"] == "control" and cell is not None:
            out["controls"][i, cell] += alarmed
        elif r["kind"] == "fault" and (r["onset_step"] or 1) > 1 and cell is not None:
            out["faults"][i, cell] += 1
            out["detected"][i, cell] += r["detected"]
            out["pre_onset"][i, cell] += r["pre_onset_alarm"]
    return runs, out


def headline(w: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mid-run average F1 per setting (over the families with a mid-run fault) and the % of healthy rows alarmed,
    for run weights ``w`` (R,) or (B, R)."""
    faults, tp = w @ c["faults"], w @ c["detected"]
    fp = (w @ c["normal_alarmed"])[..., None] + w @ c["pre_onset"] + w @ c["controls"]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(faults > 0, tp / faults, 0.0)
        f1 = 100 * np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = c["faults"].sum(axis=0) > 0  # a cell without mid-run faults in the sample is not in the table
    out = {}
    for s in STRENGTHS:
        keep = [k for k, g in enumerate(CELLS) if g.endswith(f"_{s}_fault") and present[k]]
        out[s] = f1[..., keep].mean(-1) if keep else np.full(f1.shape[:-1], np.nan)
    out["healthy"] = 100 * (w @ c["healthy_alarmed"]) / (w @ c["healthy_rows"])
    return out


def weights(runs: int, reps: int, seed: int = 0) -> np.ndarray:
    """(reps, runs) how often each run is drawn in each resample."""
    return np.random.default_rng(seed).multinomial(runs, np.full(runs, 1.0 / runs), size=reps).astype(float)


def intervals(
    rows: list[dict[str, Any]], groups: dict[str, str], reps: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """(point, 2.5 %, 97.5 %) of each headline figure (:func:`headline`) over ``reps`` resamples of runs."""
    runs, c = contributions(rows, groups)
    point, boot = headline(np.ones(len(runs)), c), headline(weights(len(runs), reps, seed), c)
    return {  # (a figure the table leaves out -- no mid-run fault of a setting -- has none)
        k: (float(point[k]), *map(float, np.nanquantile(boot[k], [0.025, 0.975])))
        for k in point
        if np.isfinite(point[k])
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every interval script takes: a result, an earlier one to pair it with, tiers, resamples."""
    parser.add_argument("result", type=Path, help="an evaluation's --json")
    parser.add_argument("--against", type=Path, help="an earlier evaluation of the same runs: the paired difference")
    parser.add_argument("--tiers", default=None, help="comma-separated (default: every tier in the file)")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)


def read_results(args: argparse.Namespace, tiers_key: str, what: str) -> tuple[dict, dict | None, list[str]]:
    """The result and the ``--against`` one of :func:`add_arguments`' ``args``, the tiers asked for (default: the
    result's ``tiers_key``), after printing what the lines that follow measure (``what``)."""
    result = json.loads(args.result.read_text(encoding="utf-8"))
    against = json.loads(args.against.read_text(encoding="utf-8")) if args.against else None
    print(
        f"{args.result}: {what}; 95 % intervals over {args.reps} resamples of runs"
        + (f"; minus {args.against} on the same resamples" if against else "")
    )
    return result, against, args.tiers.split(",") if args.tiers else list(result[tiers_key])


def paired(
    stat: Callable[[np.ndarray, Any], dict[str, np.ndarray]], w: np.ndarray, c: Any, c_before: Any = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None]:
    """``stat`` of the runs' contributions ``c`` at the point (every run once) and over the resamples ``w``, and, with
    ``c_before`` (an earlier result's contributions of the same runs), its own: :func:`describe`'s arguments."""
    ones = np.ones(w.shape[1])
    before = None if c_before is None else (stat(ones, c_before), stat(w, c_before))
    return stat(ones, c), stat(w, c), before


def _span(values: np.ndarray) -> str:
    low, high = np.nanquantile(values, [0.025, 0.975])
    return f"({low:.1f} to {high:.1f})"


def describe(
    names: dict[str, str],
    point: dict[str, np.ndarray],
    boot: dict[str, np.ndarray],
    before: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None,
) -> list[str]:
    """``<name> <point> (<2.5 %> to <97.5 %>)`` per figure of ``names``, then, with ``before`` (its point and its
    values on the same resamples), the paired difference of each."""
    out = [f"{names[k]} {float(point[k]):.1f} {_span(boot[k])}" for k in names]
    if before is not None:
        point_0, boot_0 = before
        out += [
            f"difference {names[k]} {float(point[k] - point_0[k]):+.1f} {_span(boot[k] - boot_0[k])}" for k in names
        ]
    return out
