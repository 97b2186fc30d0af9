"""The compiled live paths (:mod:`rftfm.fm.live_kernels`, :func:`rftfm.fm.level_shift_kernel.units_one`) give the
numbers of the numpy forms: the surprise score and the level-shift units against the batch paths the offline scoring
keeps, the non-finite channel against its update as it was written before it was compiled."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rftfm.fm import level_shift, non_finite
from rftfm.fm.detect import TIERS, Detector


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load_default()


def test_one_records_surprise_is_the_batch_paths(detector):
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 8, (200, len(detector.tracker.names)))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    for tier in TIERS:
        batch = detector._surprise(rows, tier)
        assert [float(detector._surprise(row, tier)) for row in rows] == batch.tolist()


def test_one_records_level_units_are_the_batch_paths(detector):
    rng = np.random.default_rng(1)
    stats = rng.normal(0, 5, (300, len(level_shift.SIGNALS)))
    stats[rng.random(stats.shape) < 0.3] = np.nan
    stats[:5] = np.nan  # nothing judged
    batch = level_shift.units(stats, detector.level_limits)
    one = np.array([level_shift.units(s, detector.level_limits) for s in stats])
    np.testing.assert_array_equal(one, batch)


class NumpyLostState(non_finite.LostState):
    """:class:`~rftfm.fm.non_finite.LostState` as it was written before it was compiled (stop 47)."""

    def advance(self, raw: np.ndarray, step: int) -> np.ndarray:
        values = raw[non_finite._TAKE]
        present = np.isfinite(values)
        absent = self.finite >= non_finite.WARMUP
        absent &= ~present
        self.finite += present
        np.copyto(self.last, values, where=present)
        if self.missing.any():
            self.missing[present] = 0
            self.since[present] = 0
        if not absent.any() or not math.isfinite(raw[non_finite.ANCHOR]):
            return non_finite._NONE_LOST
        self.since[absent & (self.missing == 0)] = step
        self.missing += absent
        lost = self.missing >= non_finite.PERSIST
        return lost if lost.any() else non_finite._NONE_LOST


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_compiled_non_finite_update_gives_the_numpy_form(seed):
    rng = np.random.default_rng(seed)
    records = rng.normal(1, 1, (80, len(non_finite.CUBE_SIGNALS)))
    cols = non_finite.COLUMNS
    records[:, cols] = np.where(rng.random((80, cols.size)) < 0.2, np.nan, records[:, cols])
    records[30:36, cols[0]] = np.inf  # a blow-up that persists
    records[rng.random(80) < 0.1, non_finite.ANCHOR] = np.nan  # records without a reward
    compiled, numpy_form = non_finite.LostState(), NumpyLostState()
    for step, raw in enumerate(records, start=1):
        np.testing.assert_array_equal(compiled.advance(raw, step), numpy_form.advance(raw, step))
        for name in ("finite", "last", "missing", "since"):
            np.testing.assert_array_equal(getattr(compiled, name), getattr(numpy_form, name), err_msg=name)
