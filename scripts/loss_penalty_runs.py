"""How far the loss-penalty statistic (:mod:`rftfm.fm.loss_penalty`) goes on healthy records, and which faulty runs
cross the channel's least threshold after a mid-run onset: the check behind docs/detection.md, method 3 (j).

    python scripts/loss_penalty_runs.py --data /work/data/h31

Healthy records: every record of normal and control runs, and faulty runs' records before onset.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from benchmark_runs import load_runs, print_counts

from rftfm.fm import loss_penalty
from rftfm.fm.cube import runs_cube


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    raw, steps = runs_cube(features, ids)
    stats = loss_penalty.cube_stats(raw, steps)
    onset = np.array([o if k.startswith("fault") and o is not None else 10**9
                      for o, k in zip(runs["onset_step"].to_list(), kinds)])
    healthy = (steps > 0) & (steps < onset[:, None])
    peak = np.fmax.reduce(np.where(healthy, stats, np.nan), axis=1)
    judged = np.isfinite(peak)
    print(f"healthy records: {int((healthy & np.isfinite(stats)).sum())} judged in {int(judged.sum())} runs; "
          f"largest statistic per run: median {np.median(peak[judged]):.2f}, 99th percentile "
          f"{np.quantile(peak[judged], 0.99):.2f}, largest {peak[judged].max():.2f} "
          f"(least threshold {loss_penalty.MIN_THRESHOLD})")
    for r in np.argsort(-np.nan_to_num(peak, nan=-np.inf))[:5]:
        print(f"  {ids[r]}: {peak[r]:.2f}")
    after = (steps >= onset[:, None]) & (steps > 0)
    crossed = np.fmax.reduce(np.where(after, stats, np.nan), axis=1) > loss_penalty.MIN_THRESHOLD
    mid_run = np.array([k.startswith("fault") for k in kinds]) & (onset > 1) & (onset < 10**9)
    hits = Counter(k for k, hit, m in zip(kinds, crossed, mid_run) if hit and m)
    faulty = [k for k, m in zip(kinds, mid_run) if m]
    print_counts(faulty, hits, "mid-run faulty runs whose statistic crosses the least threshold after onset")


if __name__ == "__main__":
    main()
