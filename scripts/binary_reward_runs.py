"""Which runs of a benchmark arm the binary-reward rule (:mod:`rftfm.fm.binary_reward`) and which break it, before or
after a fault's onset, by kind and fault type, and how far from its armed value the rule's ratio strays on healthy
records: the check behind its module docstring and docs/detection.md, method 3 (l).

    python scripts/binary_reward_runs.py --data /work/data/h31 [--sum]

``--sum``: judge the logged reward's mean and sd, as if the log had no per-function statistics.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import polars as pl
from benchmark_runs import FirstFirings, load_runs, onsets

from rftfm.fm import binary_reward


def run_units(frame: pl.DataFrame, on_sum: bool) -> tuple[list[int], np.ndarray, bool]:
    """One run's judged steps, the rule's units at each, and whether it armed by its last record."""
    state, steps, units = binary_reward.BinaryState(), [], []
    for step, parts, spreads, mean, sd in binary_reward._rows(frame):
        if on_sum:
            parts = spreads = None
        steps.append(step)
        units.append(state.advance(parts, spreads, mean, sd, step))
    return steps, np.array(units), any(f.q is not None for f in state.functions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sum", action="store_true", help="judge the logged reward, not each function")
    runs, features, ids, kinds = load_runs(__doc__, parser)
    on_sum = parser.parse_args().sum
    onset = onsets(runs, kinds)
    frames = dict(features.filter(pl.col("run_id").is_in(ids)).sort("step").group_by(["run_id"]).__iter__())
    arming, fired = Counter(), FirstFirings()
    healthy_largest = 0.0
    for r, run_id in enumerate(ids):
        steps, units, armed = run_units(frames[(run_id,)], on_sum)
        arming[kinds[r]] += armed
        healthy = np.array(steps) < onset[r]
        if healthy.any():
            healthy_largest = max(healthy_largest, float(units[healthy].max()) * binary_reward.TOLERANCE)
        where = np.flatnonzero(units > 1.0)
        if not where.size:
            continue
        first = steps[where[0]]
        if fired.add(kinds[r], first, onset[r]):
            print(f"{run_id}: breaks it at step {first}, before any fault ({units[where[0]]:.0f} units)")
    fired.print(kinds, f"{sum(arming.values())} of {len(ids)} runs arm it; broken before any fault (healthy records)",
                arming, "armed", "broken", "break")
    print(f"largest |q / q_armed - 1| at a healthy record: {healthy_largest:.2g}")


if __name__ == "__main__":
    main()
