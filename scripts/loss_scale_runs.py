"""How far the loss-scale statistic (:mod:`rftfm.fm.loss_scale`) goes on healthy records, per loss type, and which
faulty runs cross the shipped detector's threshold after a mid-run onset: the check behind docs/detection.md, method
3 (k).

    python scripts/loss_scale_runs.py --data /work/data/h31

Healthy records: every record of normal and control runs, and faulty runs' records before onset. The statistic is a
log ratio; it is printed as the ratio itself (the window's median loss magnitude over the largest before).
"""

from __future__ import annotations

import math

import numpy as np
from benchmark_runs import healthy_peaks, load_runs, onsets, print_healthy_peaks, print_mid_run_crossings

from rftfm.fm import loss_scale
from rftfm.fm.cube import runs_cube
from rftfm.fm.detect import Detector


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    raw, steps = runs_cube(features, ids)
    stats = loss_scale.cube_stats(raw, steps)
    threshold = Detector.load_default().thresholds["a"]["loss_scale"]
    onset = onsets(runs, kinds)
    peak = healthy_peaks(stats, steps, onset)
    loss_types = np.array(runs["loss_type"].to_list())
    print(f"shipped threshold (tier a): {threshold:.3f} = x{math.exp(threshold):.2f} the largest magnitude before")
    print_healthy_peaks(peak, ids, loss_types, "ratio", lambda v: f"x{math.exp(v):.2f}")
    print_mid_run_crossings(stats, steps, onset, kinds, threshold,
                            "mid-run faulty runs whose statistic crosses the shipped threshold after onset")


if __name__ == "__main__":
    main()
