"""How far the loss-scale statistic (:mod:`rftfm.fm.loss_scale`) goes on healthy records, per loss type, and which
faulty runs cross the shipped detector's threshold after a mid-run onset: the check behind docs/detection.md, method
3 (k).

    python scripts/loss_scale_runs.py --data /work/data/h31

Healthy records: every record of normal and control runs, and faulty runs' records before onset. The statistic is a
log ratio; it is printed as the ratio itself (the window's median loss magnitude over the scale before).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from benchmark_runs import load_runs, print_counts

from rftfm.fm import loss_scale
from rftfm.fm.cube import runs_cube
from rftfm.fm.detect import Detector


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    raw, steps = runs_cube(features, ids)
    stats = loss_scale.cube_stats(raw, steps)
    threshold = Detector.load_default().thresholds["a"]["loss_scale"]
    onset = np.array([o if k.startswith("fault") and o is not None else 10**9
                      for o, k in zip(runs["onset_step"].to_list(), kinds)])
    healthy = (steps > 0) & (steps < onset[:, None])
    peak = np.fmax.reduce(np.where(healthy, stats, np.nan), axis=1)
    loss_types = np.array(runs["loss_type"].to_list())
    print(f"shipped threshold (tier a): {threshold:.3f} = x{math.exp(threshold):.2f} the scale before")
    for loss_type in sorted(set(loss_types)):
        judged = np.isfinite(peak) & (loss_types == loss_type)
        if judged.any():
            print(f"healthy records, loss type {loss_type}: {int(judged.sum())} runs judged; largest ratio per run: "
                  f"median x{math.exp(np.median(peak[judged])):.2f}, largest x{math.exp(peak[judged].max()):.2f}")
    for r in np.argsort(-np.nan_to_num(peak, nan=-np.inf))[:5]:
        print(f"  {ids[r]} ({loss_types[r]}): x{math.exp(peak[r]):.2f}")
    after = (steps >= onset[:, None]) & (steps > 0)
    crossed = np.fmax.reduce(np.where(after, stats, np.nan), axis=1) > threshold
    mid_run = np.array([k.startswith("fault") for k in kinds]) & (onset > 1) & (onset < 10**9)
    hits = Counter(k for k, hit, m in zip(kinds, crossed, mid_run) if hit and m)
    faulty = [k for k, m in zip(kinds, mid_run) if m]
    print_counts(faulty, hits, "mid-run faulty runs whose statistic crosses the shipped threshold after onset")


if __name__ == "__main__":
    main()
