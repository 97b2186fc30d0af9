"""Train / test splits of a benchmark's runs: held-out seeds, and whole configurations held out.

* ``seed``: about 30 % of seeds held out (every run has its own seed): the in-distribution figure.
* ``task`` / ``size``: one fixed task group (``arith_b``) / model size (``s``) held out (the
  published benchmark's configuration has only three task groups and two sizes).
* ``config``: leave-configuration-out folds (:func:`config_folds`): every task group, model
  family, model size and hyper-parameter regime (no KL term, cosine / linear / constant
  schedule, logging cadence > 1, long runs) is the test side of one fold; the folds' union
  is the headline protocol for configurations a detector has never seen.
* ``listed:<file>``: the runs whose ids the file lists (one per line) are the test side, every other run
  trains: for an external test set, e.g. runs generated after a method was developed on the others.

No fold shares a seed between its sides (every run has its own seed).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import polars as pl

SPLITS = ("seed", "task", "size", "config", "listed:<file>")
LISTED = "listed:"
HELD_OUT_TASK = "arith_b"
HELD_OUT_SIZE = "s"
TEST_SEED_FRACTION = 0.3
LONG_RUN_STEPS = 100  # runs this long or longer form the "long runs" fold

Fold = tuple[str, pl.DataFrame, pl.DataFrame]


def seed_is_test(seed: int) -> bool:
    """Deterministic held-out seeds: about 30 % of seeds (every run has its own seed)."""
    return (seed * 2654435761 % 2**32) / 2**32 < TEST_SEED_FRACTION


def split_runs(runs: pl.DataFrame, split: str = "seed") -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) run tables for ``split`` in ``seed``, ``task``, ``size`` (``config`` has folds:
    :func:`config_folds`)."""
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
    elif split.startswith(LISTED):
        path = Path(split[len(LISTED):])
        try:
            listed = {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
        except OSError as exc:
            raise ValueError(f"split {split!r}: cannot read the run list ({exc})") from None
        unknown = listed - set(runs["run_id"].to_list())
        if unknown:
            raise ValueError(f"split {split!r}: {len(unknown)} listed runs are not in the data, e.g. {min(unknown)}")
        test = runs["run_id"].is_in(sorted(listed))
    elif split == "config":
        raise ValueError("the config split has several folds: use config_folds(runs) or folds(runs, 'config')")
    else:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return runs.filter(~test), runs.filter(test)


def _column(runs: pl.DataFrame, name: str, default: object) -> pl.Expr:
    """``name``, with ``default`` where the run table lacks it (published data, older runs)."""
    if name not in runs.columns:
        return pl.lit(default)
    return pl.col(name) if default is None else pl.col(name).fill_null(default)


#: regime folds: name -> (test-side predicate, columns it needs)
REGIME_FOLDS: dict[str, Callable[[pl.DataFrame], pl.Expr]] = {
    "beta=0": lambda r: _column(r, "beta", 0.04) == 0.0,
    "schedule=cosine": lambda r: _column(r, "lr_scheduler", "constant") == "cosine",
    "schedule=linear": lambda r: _column(r, "lr_scheduler", "constant") == "linear",
    "schedule=constant": lambda r: _column(r, "lr_scheduler", "constant") == "constant",
    "logging_steps>1": lambda r: _column(r, "logging_steps", 1) > 1,
    f"num_steps>={LONG_RUN_STEPS}": lambda r: _column(r, "num_steps", 0) >= LONG_RUN_STEPS,
}


def config_folds(runs: pl.DataFrame) -> list[Fold]:
    """Leave-configuration-out folds: ``(fold_name, train_runs, test_runs)``.

    One fold per task group (``task=<name>``), model family (``family=<name>``), model size
    (``size=<name>``) and hyper-parameter regime (:data:`REGIME_FOLDS`); a fold is kept only
    when both of its sides hold runs. The test side holds every run of the held-out value --
    normal, faulty and control runs alike.
    """
    folds: list[Fold] = []
    for axis, column, default in (("task", "task_group", None), ("family", "model_family", "gpt2"),
                                  ("size", "model_size", None)):
        if column not in runs.columns and default is None:
            continue
        values = runs.select(_column(runs, column, default).alias("v"))["v"]
        for value in sorted(v for v in values.unique().to_list() if v is not None):
            folds.append((f"{axis}={value}", runs.filter(values != value), runs.filter(values == value)))
    for name, predicate in REGIME_FOLDS.items():
        test = runs.select(predicate(runs).alias("t"))["t"].fill_null(False)
        folds.append((name, runs.filter(~test), runs.filter(test)))
    return [(name, train, test) for name, train, test in folds if train.height and test.height]


def folds(runs: pl.DataFrame, split: str = "seed") -> list[Fold]:
    """Every split as a list of folds: one fold for ``seed`` / ``task`` / ``size``, many for ``config``."""
    if split == "config":
        return config_folds(runs)
    train, test = split_runs(runs, split)
    return [(split, train, test)]


def hash_str(text: str) -> int:
    return zlib.crc32(text.encode())


def held_out(runs: pl.DataFrame, split: str = "seed", fold: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) of one held-out side: ``seed`` / ``task`` / ``size``, or for ``config`` the folds named
    in ``fold`` (comma-separated, e.g. ``"task=digits,size=l"``): their test sides together, and every other run
    as the train side -- what artifacts fitted for a later evaluation on those configurations are fitted on."""
    if split != "config":
        return split_runs(runs, split)
    available = {name: test for name, _, test in config_folds(runs)}
    names = [f.strip() for f in (fold or "").split(",") if f.strip()]
    unknown = [n for n in names if n not in available]
    if not names or unknown:
        raise ValueError(f"the config split needs --fold with some of: {', '.join(available)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    test_ids = set().union(*(set(available[n]["run_id"].to_list()) for n in names))
    mask = pl.col("run_id").is_in(sorted(test_ids))
    return runs.filter(~mask), runs.filter(mask)
