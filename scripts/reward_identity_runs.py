"""Which runs of a benchmark break the reward identity (:mod:`rftfm.fm.reward_identity`) once it is armed, by kind and
fault type, with the first record that breaks it and how many runs arm it at all: the check behind
docs/detection.md, method 3 (i).

    python scripts/reward_identity_runs.py --data /work/data/h31
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from rftfm.bench.eval_detection import _load
from rftfm.fm import reward_identity
from rftfm.fm.cube import runs_cube


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a benchmark directory")
    args = parser.parse_args()
    runs, features = _load(args.data)
    ids = runs["run_id"].to_list()
    _, steps = runs_cube(features, ids)
    units = reward_identity.runs_units(features, ids, steps.shape[1])
    functions = {}  # each run's own reward functions: those it ever logged (the frame has every run's as columns)
    for (run_id,), frame in features.select("run_id", reward_identity.PARTS).drop_nulls().group_by(["run_id"]):
        logged = frame[reward_identity.PARTS].to_list()
        functions[run_id] = sum(any(p[k] is not None for p in logged) for k in range(len(logged[0])))
    kinds = [
        f"{k} {t}" if k == "fault" else k
        for k, t in zip(runs["control_or_fault"].to_list(), runs["fault_type"].fill_null("").to_list())
    ]
    total, several, breaking = Counter(kinds), Counter(), Counter()
    for r, run_id in enumerate(ids):
        several[kinds[r]] += functions.get(run_id, 0) >= 2
        where = np.flatnonzero(units[r] > 1.0)
        if where.size:
            breaking[kinds[r]] += 1
            onset = runs["onset_step"][r]
            print(f"{run_id}: first at step {int(steps[r, where[0]])} (onset {onset}), {units[r, where[0]]:.0f} units")
    with_several = sum(several.values())
    print(f"\n{sum(breaking.values())} of {len(ids)} runs break it ({with_several} with two reward functions or more):")
    for kind in sorted(total):
        print(f"  {kind}: {breaking[kind]} of {total[kind]} ({several[kind]} with two functions or more)")


if __name__ == "__main__":
    main()
