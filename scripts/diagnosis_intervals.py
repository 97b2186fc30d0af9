"""Bootstrap intervals for a diagnosis evaluation's target figures: the Diagnoser's family and type top-1 on the
detected easy faults (and on every faulty run), per tier, resampling runs with all their fold rows.

    python scripts/diagnosis_intervals.py docs/results/diagnosis-config.json [--tiers a,bc]
    python scripts/diagnosis_intervals.py NEW.json --against OLD.json   # a change, paired by run

An abstention counts wrong, as in the tables. The point estimates are recomputed from the JSON's rows and checked
against the figures it holds. Between two generations of the benchmark (docs/diagnosis.md, stop 43) the detected
easy set itself changes, which these intervals (over runs, for one set) do not cover.
"""

from __future__ import annotations

import argparse

import numpy as np

from rftfm.bench import intervals
from rftfm.faults.taxonomy import FAULT_TYPES

SUBSETS = {"detected easy": lambda r: r["at_alarm"] and r["strength"] == "easy", "all": lambda r: True}


def counts(rows: list[dict], runs: list[str], subset: str) -> dict[str, np.ndarray]:
    """Per run (summed over its fold rows in ``subset``): rows, right types, right families."""
    index = {r: i for i, r in enumerate(runs)}
    out = {k: np.zeros(len(runs)) for k in ("rows", "type", "family")}
    for r in rows:
        if not SUBSETS[subset](r):
            continue
        i, guess = index[r["run_id"]], r["diagnosed"]
        out["rows"][i] += 1
        out["type"][i] += guess == r["true"]
        out["family"][i] += guess in FAULT_TYPES and FAULT_TYPES[guess].family == FAULT_TYPES[r["true"]].family
    return out


def checked(result: dict, tier: str, subset: str) -> tuple[dict[str, np.ndarray], list[str]]:
    rows = result["tiers"][tier]["runs"]
    runs = sorted({r["run_id"] for r in rows})
    c = counts(rows, runs, subset)
    stored = result["tiers"][tier]["diagnoser"][subset]
    for key, name in (("type", "type_top1"), ("family", "family_accuracy")):
        if abs(c[key].sum() / c["rows"].sum() - stored[name]) > 1e-9:
            raise SystemExit(f"tier {tier} {subset}: recomputed {name} differs from the stored {stored[name]:.4f}")
    return c, runs


def rates(w: np.ndarray, c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = w @ c["rows"]
    return {k: 100 * (w @ c[k]) / n for k in ("family", "type")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    intervals.add_arguments(parser)
    args = parser.parse_args()
    result, against, tiers = intervals.read_results(args, "tiers", "Diagnoser, family / type top-1 %")
    names = {"family": "family", "type": "type"}
    for tier in tiers:
        for subset in SUBSETS:
            c, runs = checked(result, tier, subset)
            c_0 = None
            if against is not None:
                c_0, runs_0 = checked(against, tier, subset)
                if runs_0 != runs:
                    raise SystemExit(f"tier {tier}: the two files hold different runs")
            estimates = intervals.paired(rates, intervals.weights(len(runs), args.reps, args.seed), c, c_0)
            rows, units = int(c["rows"].sum()), int((c["rows"] > 0).sum())
            described = ", ".join(intervals.describe(names, *estimates))
            print(f"tier {tier}, {subset} ({rows} rows of {units} runs): {described}")


if __name__ == "__main__":
    main()
