"""How far the loss-penalty statistic (:mod:`rftfm.fm.loss_penalty`) goes on healthy records, and which faulty runs
cross the channel's least threshold after a mid-run onset, and the term each such penalty multiplies: the check
behind docs/detection.md, method 3 (j), and docs/diagnosis.md's penalty term.

    python scripts/loss_penalty_runs.py --data /work/data/h31

Healthy records: every record of normal and control runs, and faulty runs' records before onset.
"""

from __future__ import annotations

import numpy as np
from benchmark_runs import healthy_peaks, load_runs, onsets, print_mid_run_crossings

from rftfm.fm import loss_penalty
from rftfm.fm.cube import runs_cube


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    raw, steps = runs_cube(features, ids)
    stats = loss_penalty.cube_stats(raw, steps)
    onset = onsets(runs, kinds)
    peak = healthy_peaks(stats, steps, onset)
    judged = np.isfinite(peak)
    records = int((np.isfinite(stats) & (steps < onset[:, None])).sum())
    print(f"healthy records: {records} judged in {int(judged.sum())} runs; "
          f"largest statistic per run: median {np.median(peak[judged]):.2f}, 99th percentile "
          f"{np.quantile(peak[judged], 0.99):.2f}, largest {peak[judged].max():.2f} "
          f"(least threshold {loss_penalty.MIN_THRESHOLD})")
    for r in np.argsort(-np.nan_to_num(peak, nan=-np.inf))[:5]:
        print(f"  {ids[r]}: {peak[r]:.2f}")
    crossed = print_mid_run_crossings(stats, steps, onset, kinds, loss_penalty.MIN_THRESHOLD,
                                      "mid-run faulty runs whose statistic crosses the least threshold after onset")
    print("\nthe term each penalty multiplies at its first record over the least threshold (penalty_term):")
    for r in np.flatnonzero(crossed):
        at = int(np.argmax((steps[r] >= onset[r]) & (stats[r] > loss_penalty.MIN_THRESHOLD)))
        term, coefficient = loss_penalty.penalty_term(raw[r, : at + 1], steps[r, : at + 1])
        print(f"  {ids[r]}: {term or 'none'}" + (f", coefficient {coefficient:.3f}" if term else ""))

if __name__ == "__main__":
    main()
