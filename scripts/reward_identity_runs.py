"""Which runs of a benchmark break the reward identity (:mod:`rftfm.fm.reward_identity`) once it is armed, by kind and
fault type, with the first record that breaks it and how many runs arm it at all: the check behind
docs/detection.md, method 3 (i).

    python scripts/reward_identity_runs.py --data /work/data/h31
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from benchmark_runs import load_runs, print_counts

from rftfm.fm import reward_identity
from rftfm.fm.cube import runs_cube


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    _, steps = runs_cube(features, ids)
    units = reward_identity.runs_units(features, ids, steps.shape[1])
    functions = reward_identity.functions_per_run(features)
    several: Counter = Counter()
    breaking: Counter = Counter()
    for r, run_id in enumerate(ids):
        several[kinds[r]] += functions.get(run_id, 0) >= 2
        where = np.flatnonzero(units[r] > 1.0)
        if where.size:
            breaking[kinds[r]] += 1
            onset = runs["onset_step"][r]
            print(f"{run_id}: first at step {int(steps[r, where[0]])} (onset {onset}), {units[r, where[0]]:.0f} units")
    n_several = sum(several.values())
    headline = f"{sum(breaking.values())} of {len(ids)} runs break it ({n_several} with two reward functions or more)"
    print_counts(kinds, breaking, headline, several, "with two functions or more")


if __name__ == "__main__":
    main()
