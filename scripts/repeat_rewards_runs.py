"""Which runs of a benchmark score identical completions of one prompt differently (:mod:`rftfm.fm.repeat_rewards`),
before or after a fault's onset, by kind and fault type, and the most disagreeing sets a healthy record has: the check
behind its module docstring and docs/detection.md, method 3 (o).

    python scripts/repeat_rewards_runs.py --data /work/data/h31
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
from benchmark_runs import FirstFirings, load_runs, onsets

from rftfm.fm import repeat_rewards


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    onset = onsets(runs, kinds)
    frames = dict(features.filter(pl.col("run_id").is_in(ids)).sort("step").group_by(["run_id"]).__iter__())
    known, fired = Counter(), FirstFirings()
    healthy_most = 0.0
    for r, run_id in enumerate(ids):
        frame = frames[(run_id,)]
        steps = frame["step"].to_numpy()
        count = frame[repeat_rewards.SIGNAL].to_numpy().astype(float)  # (null: NaN, no repeated completion)
        known[kinds[r]] += bool(np.isfinite(count).any())
        healthy = (steps < onset[r]) & np.isfinite(count)
        if healthy.any():
            healthy_most = max(healthy_most, float(count[healthy].max()))
        state = repeat_rewards.RepeatState()
        units = np.array([state.advance(None if v != v else float(v), int(s)) for s, v in zip(steps, count)])
        where = np.flatnonzero(units > 1.0)
        if not where.size:
            continue
        first = int(steps[where[0]])
        if fired.add(kinds[r], first, onset[r]):
            print(f"{run_id}: {units[where[0]]:g} disagreeing sets over the last records at step {first}, before any "
                  "fault")
    fired.print(kinds, f"{sum(known.values())} of {len(ids)} runs repeat a completion of one prompt in some batch; "
                "flagged before any fault (healthy records)", known, "repeat one", "flagged", "flag")
    print(f"most disagreeing sets at a healthy record: {healthy_most:g} (flagged above {repeat_rewards.LIMIT:g} over "
          f"the last {repeat_rewards.RECENT} records)")


if __name__ == "__main__":
    main()
