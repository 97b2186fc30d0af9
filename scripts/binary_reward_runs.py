"""Which runs of a benchmark arm the binary-reward rule (:mod:`rftfm.fm.binary_reward`) and which break it, before or
after a fault's onset, by kind and fault type: the check behind its module docstring and docs/detection.md.

    python scripts/binary_reward_runs.py --data /work/data/h31
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
from benchmark_runs import load_runs, onsets, print_counts

from rftfm.fm import binary_reward
from rftfm.fm.cube import runs_cube


def armed_runs(features: pl.DataFrame, ids: list[str]) -> set[str]:
    """The runs whose every function, or logged reward, the rule trusts by their last record."""
    out = set()
    sub = features.filter(pl.col("run_id").is_in(ids)).sort("step")
    for (run_id,), frame in sub.group_by(["run_id"], maintain_order=True):
        state = binary_reward.BinaryState()
        for step, parts, spreads, mean, sd in binary_reward._rows(frame):
            state.advance(parts, spreads, mean, sd, step)
        if any(f.q is not None for f in state.functions):
            out.add(str(run_id))
    return out


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    _, steps = runs_cube(features, ids)
    units = binary_reward.runs_units(features, ids, steps.shape[1])
    onset = onsets(runs, kinds)
    armed = armed_runs(features, ids)
    arming, before, after = Counter(), Counter(), Counter()
    delays: dict[str, list[int]] = {}
    for r, run_id in enumerate(ids):
        arming[kinds[r]] += run_id in armed
        where = np.flatnonzero(units[r] > 1.0)
        if not where.size:
            continue
        first = int(steps[r, where[0]])
        if first < onset[r]:
            before[kinds[r]] += 1
            print(f"{run_id}: breaks it at step {first}, before any fault ({units[r, where[0]]:.0f} units)")
        else:
            after[kinds[r]] += 1
            delays.setdefault(kinds[r], []).append(first - int(onset[r]))
    print_counts(kinds, before, f"{sum(arming.values())} of {len(ids)} runs arm it; broken before any fault (healthy "
                 "records)", arming, "armed")
    print_counts(kinds, after, "broken at or after a fault's onset")
    print("median records from onset to the first break: "
          + (", ".join(f"{k} {np.median(v):g}" for k, v in sorted(delays.items())) or "none broken"))


if __name__ == "__main__":
    main()
