"""Train / test splits of a benchmark's runs: held-out seeds, task group or model size.

Every split keeps configurations honest: the test side never shares a seed with the
train side; the task / size splits hold out one whole task group / model size.
"""

from __future__ import annotations

import polars as pl

SPLITS = ("seed", "task", "size")
HELD_OUT_TASK = "arith_b"
HELD_OUT_SIZE = "s"
TEST_SEED_FRACTION = 0.3


def seed_is_test(seed: int) -> bool:
    """Deterministic held-out seeds: about 30 % of seeds (every run has its own seed)."""
    return (seed * 2654435761 % 2**32) / 2**32 < TEST_SEED_FRACTION


def split_runs(runs: pl.DataFrame, split: str = "seed") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) run tables for ``split`` in :data:`SPLITS`."""
    if split == "seed":
        if "seed" not in runs.columns or runs["seed"].null_count() == runs.height:
            # published data has no seeds: hold out by a stable hash of the run id instead
            test = runs["run_id"].map_elements(lambda r: seed_is_test(hash_str(r)), return_dtype=pl.Boolean)
        else:
            test = runs["seed"].map_elements(lambda s: seed_is_test(int(s)), return_dtype=pl.Boolean)
    elif split == "task":
        test = runs["task_group"] == HELD_OUT_TASK
    elif split == "size":
        test = runs["model_size"] == HELD_OUT_SIZE
    else:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return runs.filter(~test), runs.filter(test)


def hash_str(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


def split_folds(runs: pl.DataFrame, split: str = "seed") -> list[tuple[str, pl.DataFrame, pl.DataFrame]]:
    """(fold name, train, test) folds of ``split``: one fold for the single held-out splits."""
    train, test = split_runs(runs, split)
    return [(split, train, test)]
