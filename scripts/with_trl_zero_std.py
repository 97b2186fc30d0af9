"""A copy of a benchmark directory whose step records carry TRL's zero-variance fraction instead of the engine's.

    python scripts/with_trl_zero_std.py --data /work/data/h31 --out /work/data/h31t

The engine records ``frac_zero_std_groups`` as the share of groups whose advantages are all zero after any credit
fault; a user's TRL log gives ``frac_reward_zero_std``, computed from the rewards (0 under
``scale_rewards="batch"``), which the engine also logs, as ``extra.frac_reward_zero_std``. The copy puts that value
in the field, so an evaluation on it reads what a TRL user's tier (a) has. Every other file is hard-linked.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import polars as pl

TRL_KEY = "extra.frac_reward_zero_std"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new directory")
    shutil.copytree(args.data, args.out, copy_function=os.link)
    rewritten = without = 0
    for path in sorted(args.out.glob("*/*/steps.parquet")):
        steps = pl.read_parquet(path)
        if TRL_KEY not in steps.columns:
            without += 1
            continue
        path.unlink()  # the hard link: the source's file stays as it was
        steps.with_columns(pl.col(TRL_KEY).alias("frac_zero_std_groups")).write_parquet(path)
        rewritten += 1
    print(f"{args.out}: {rewritten} runs rewritten, {without} without {TRL_KEY} left as they were")


if __name__ == "__main__":
    main()
