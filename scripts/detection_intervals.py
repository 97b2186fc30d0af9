"""Bootstrap intervals for a detection evaluation's headline: RFT-FM's mid-run average F1 (protocol B) and its share of
normal and control rows alarmed, per tier, resampling runs (:mod:`rftfm.bench.intervals`).

    python scripts/detection_intervals.py docs/results/detection-config.json --data /work/data/h31 [--tiers a,bc]
    python scripts/detection_intervals.py --data DIR NEW.json --against OLD.json   # a change, paired by run

``--data``: the benchmark the results were run on, for results whose rows do not name their run's group (before
stop 43). The point estimates are checked against the figures the JSON holds. Two evaluations of the same code on two
generations of the benchmark (docs/detection.md, stop 43) differ by about what these intervals span.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from rftfm.bench import intervals
from rftfm.bench.eval_detection import RFTFM
from rftfm.faults.taxonomy import STRENGTHS


def checked(result: dict, tier: str, data: Path | None) -> tuple[list[str], dict[str, np.ndarray]]:
    """The tier's RFT-FM run ids and per-run counts, after checking that they give back the JSON's own F1."""
    rows = result["methods"][tier][RFTFM]["runs"]
    groups = intervals.run_groups(rows, data)
    if groups is None:
        raise SystemExit("these rows do not name their run's group: give --data, the benchmark they were run on")
    runs, c = intervals.contributions(rows, groups)
    point = intervals.headline(np.ones(len(runs)), c)
    for s, stored in result["methods"][tier][RFTFM]["mid_run"]["B"]["avg_f1"].items():
        if stored is not None and abs(float(point[s]) - stored) > 1e-6:
            raise SystemExit(f"tier {tier}: recomputed F1 {s} {float(point[s]):.3f} != stored {stored:.3f}")
    return runs, c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    intervals.add_arguments(parser)
    parser.add_argument("--data", type=Path, help="the benchmark it was run on (run groups, for older results)")
    args = parser.parse_args()
    result, against, tiers = intervals.read_results(args, "methods", "RFT-FM, mid-run onsets, protocol B")
    names = {**{s: f"F1 {s}" for s in STRENGTHS}, "healthy": "healthy rows alarmed %"}
    for tier in tiers:
        runs, c = checked(result, tier, args.data)
        c_0 = None
        if against is not None:
            runs_0, c_0 = checked(against, tier, args.data)
            if runs_0 != runs:
                raise SystemExit(f"tier {tier}: the two files hold different runs")
        estimates = intervals.paired(intervals.headline, intervals.weights(len(runs), args.reps, args.seed), c, c_0)
        print(f"tier {tier} ({len(runs)} runs): " + ", ".join(intervals.describe(names, *estimates)))


if __name__ == "__main__":
    main()
