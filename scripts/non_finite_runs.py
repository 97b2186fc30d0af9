"""Which runs of a benchmark lose a number their policy's weights produce (:mod:`rftfm.fm.non_finite`), by kind and
fault type, with the first record that lost one: the check behind docs/detection.md, method 3 (h).

    python scripts/non_finite_runs.py --data /work/data/h31
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from rftfm.bench.eval_detection import _load
from rftfm.fm import non_finite
from rftfm.fm.cube import runs_cube


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a benchmark directory")
    args = parser.parse_args()
    runs, features = _load(args.data)
    ids = runs["run_id"].to_list()
    raw, steps = runs_cube(features, ids)
    lost = non_finite.cube_lost(raw, steps)
    kinds = [
        f"{k} {t}" if k == "fault" else k
        for k, t in zip(runs["control_or_fault"].to_list(), runs["fault_type"].fill_null("").to_list())
    ]
    total, losing = Counter(kinds), Counter()
    for r, run_id in enumerate(ids):
        where = np.flatnonzero(lost[r].any(axis=-1))
        if where.size:
            losing[kinds[r]] += 1
            gone = [s for s, g in zip(non_finite.SIGNALS, lost[r, where[0]]) if g]
            onset = runs["onset_step"][r]
            print(f"{run_id}: first at step {int(steps[r, where[0]])} (onset {onset}), lost {', '.join(gone)}")
    print(f"\n{sum(losing.values())} of {len(ids)} runs lose a signal ({', '.join(non_finite.SIGNALS)}):")
    for kind in sorted(total):
        print(f"  {kind}: {losing[kind]} of {total[kind]}")


if __name__ == "__main__":
    main()
