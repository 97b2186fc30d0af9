"""The shipped detector's first alarm on each named run of a benchmark, tier a (step metrics only), and the evidence
it leads with: how docs/detection.md reads which signals raised the healthy-run alarms of an external sample.

    python scripts/first_alarms.py --data /work/data/w40 RUN_ID [RUN_ID ...]

Each run's records are streamed through ``Detector.load_default()`` as a live run would be, with the signals tier a
lacks (per-trajectory records, held-out accuracy) hidden.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from rftfm.fm.detect import TIERS, Detector
from rftfm.fm.features import features_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a benchmark directory (the published layout)")
    parser.add_argument("runs", nargs="+", help="run ids")
    args = parser.parse_args()
    detector = Detector.load_default()
    for run_id in args.runs:
        run_dir = next(Path(args.data).glob(f"*/{run_id}"))
        info = json.loads((run_dir / "run_info.json").read_text())
        frame = features_frame(pl.read_parquet(run_dir / "steps.parquet"), None)
        hidden = [c for c in frame.columns if c.startswith("traj_") or c == "eval_accuracy"]
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in hidden if c not in TIERS["a"])
        records = [
            (int(row["step"]), {k: v for k, v in row.items() if k not in ("run_id", "step", "fault_active")})
            for row in frame.iter_rows(named=True)
        ]
        detector.reset(run_id)
        first = next((a for a in detector.observe_many(run_id, records) if a is not None), None)
        print(f"{run_id} (loss {info['loss_type']}, scale_rewards {info['scale_rewards']}, beta {info['beta']}): "
              + ("no alarm" if first is None else f"first alarm at step {first.step}, score {first.score:.2f}"))
        for e in [] if first is None else first.evidence[:3]:
            print(f"    {e.signal} {e.direction}: {e.value:.4g} vs {e.expected:.4g} before step {e.since_step}")


if __name__ == "__main__":
    main()
