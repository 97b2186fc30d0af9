"""Which runs of a benchmark lose a number their policy's weights produce (:mod:`rftfm.fm.non_finite`), by kind and
fault type, with the first record that lost one: the check behind docs/detection.md, method 3 (h).

    python scripts/non_finite_runs.py --data /work/data/h31
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from benchmark_runs import load_runs, print_counts

from rftfm.fm import non_finite
from rftfm.fm.cube import runs_cube


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    raw, steps = runs_cube(features, ids)
    lost = non_finite.cube_lost(raw, steps)
    losing: Counter = Counter()
    for r, run_id in enumerate(ids):
        where = np.flatnonzero(lost[r].any(axis=-1))
        if where.size:
            losing[kinds[r]] += 1
            gone = [s for s, g in zip(non_finite.SIGNALS, lost[r, where[0]]) if g]
            onset = runs["onset_step"][r]
            print(f"{run_id}: first at step {int(steps[r, where[0]])} (onset {onset}), lost {', '.join(gone)}")
    headline = f"{sum(losing.values())} of {len(ids)} runs lose a signal ({', '.join(non_finite.SIGNALS)})"
    print_counts(kinds, losing, headline)


if __name__ == "__main__":
    main()
