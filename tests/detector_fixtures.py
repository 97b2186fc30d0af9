"""A small detector fitted on synthetic tier-a runs, and rows streamed through it (the channel tests' set-up)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

from rftfm.fm.cube import runs_cube
from rftfm.fm.detect import Detector, DetectorConfig
from rftfm.fm.features import FEATURES
from rftfm.records import StepRecord


def fit_synthetic(
    rows_of: Callable[[str, int, int | None], list[dict]], fault_type: str, first_onset: int, runs: int = 24
) -> Detector:
    """Tier a fitted on ``runs`` runs of ``rows_of(run_id, seed, onset)``: every third faulty (``fault_type`` from
    ``first_onset`` + 0..7), the rest normal, over four task groups."""
    table, rows = [], []
    for i in range(runs):
        kind, onset = ("fault", first_onset + i % 8) if i % 3 == 0 else ("normal", None)
        run_id = f"r{i}"
        table.append({"run_id": run_id, "task_group": f"t{i % 4}", "model_size": "m", "control_or_fault": kind,
                      "onset_step": onset, "fault_type": fault_type if onset else None})
        rows += rows_of(run_id, i, onset)
    frame = pl.DataFrame(rows)
    features = frame.with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(f) for f in FEATURES if f not in frame.columns]
    ).select("run_id", "step", *FEATURES)
    return Detector(DetectorConfig(num_rounds=30, folds=3)).fit(pl.DataFrame(table), features, tiers=("a",))


def stream(detector: Detector, rows: list[dict]) -> tuple[list[float], list]:
    """Each row's score and the alarms, observed live as one run."""
    detector.reset(rows[0]["run_id"])
    scores, alarms = [], []
    for row in rows:
        alarm = detector.observe(StepRecord(**row))
        scores.append(detector.last_score)
        alarms += [alarm] if alarm is not None else []
    return scores, alarms


def replayed_score(detector: Detector, rows: list[dict], upto: int, back_to: int) -> tuple[float, float]:
    """The score at record ``upto`` of a run observed live, and again after a rollback to step ``back_to`` (the
    records from there on observed once more): a rollback that restores every channel's state gives the same."""
    records = [StepRecord(**r) for r in rows]
    detector.reset(rows[0]["run_id"])
    for r in records[:upto]:
        detector.observe(r)
    first = detector.last_score
    for r in records[back_to - 1 : upto]:
        detector.observe(r)
    return first, detector.last_score


def streamed_alarms(detector: Detector, rows: list[dict]) -> list:
    """The alarms of one run observed live, after checking that every record's live score is the offline one
    (:meth:`Detector.score_cube` of the same rows, tier a)."""
    cube, steps = runs_cube(pl.DataFrame(rows), [rows[0]["run_id"]])
    offline, _ = detector.score_cube(cube, steps, "a")
    scores, alarms = stream(detector, rows)
    np.testing.assert_allclose(scores, offline[0], rtol=1e-9)
    return alarms
