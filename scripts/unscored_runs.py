"""Which runs of a benchmark lose completions to no reward function scoring them (:mod:`rftfm.fm.unscored`), before or
after a fault's onset, by kind and fault type, and the largest share a healthy record loses: the check behind its
module docstring and docs/detection.md, method 3 (n).

    python scripts/unscored_runs.py --data /work/data/h31
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
from benchmark_runs import FirstFirings, load_runs, onsets

from rftfm.fm import unscored


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    onset = onsets(runs, kinds)
    frames = dict(features.filter(pl.col("run_id").is_in(ids)).sort("step").group_by(["run_id"]).__iter__())
    known, fired = Counter(), FirstFirings()
    healthy_largest = 0.0
    for r, run_id in enumerate(ids):
        frame = frames[(run_id,)]
        steps = frame["step"].to_numpy()
        share = frame[unscored.SIGNAL].to_numpy().astype(float)  # (null: NaN, not judged)
        known[kinds[r]] += bool(np.isfinite(share).any())
        healthy = (steps < onset[r]) & np.isfinite(share)
        if healthy.any():
            healthy_largest = max(healthy_largest, float(share[healthy].max()))
        state = unscored.UnscoredState()
        units = np.array([state.advance(None if v != v else float(v), int(s)) for s, v in zip(steps, share)])
        where = np.flatnonzero(units > 1.0)
        if not where.size:
            continue
        first = int(steps[where[0]])
        if fired.add(kinds[r], first, onset[r]):
            print(f"{run_id}: {share[where[0]]:.0%} unscored at step {first}, before any fault")
    fired.print(kinds, f"{sum(known.values())} of {len(ids)} runs say how many completions went unscored; flagged "
                "before any fault (healthy records)", known, "say it", "flagged", "flag")
    print(f"largest share unscored at a healthy record: {healthy_largest:.3g} (flagged above {unscored.LIMIT:g})")


if __name__ == "__main__":
    main()
