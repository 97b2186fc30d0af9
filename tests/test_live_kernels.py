"""The compiled live paths (:mod:`rftfm.fm.live_kernels`, :func:`rftfm.fm.level_shift_kernel.units_one`,
:func:`rftfm.fm.trajectory_kernel.step_numbers`) give the numbers of the numpy forms: the surprise score and the
level-shift units against the batch paths the offline scoring keeps; the non-finite channel, a step's trajectory
aggregates, the invariant update and the stall streak against their numpy forms as written before they were
compiled; a record's cube row against ``with_derived`` of its numpy row."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from rftfm.fm import features, invariants, level_shift, non_finite, trajectory_kernel
from rftfm.fm.cube import CUBE_SIGNALS, FlatStreak, record_row, with_derived
from rftfm.fm.detect import SURPRISE_READS, TIERS, Detector
from rftfm.fm.features import FEATURES
from rftfm.records import TrajectoryFlags, TrajectoryRecord


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load_default()


def test_one_records_surprise_is_the_batch_paths(detector):
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 8, (200, len(detector.tracker.names)))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    shipped = detector.config.surprise_reads
    for reads in SURPRISE_READS:  # ("step+eval" gates the held-out accuracy on its warm-up feature)
        detector.config.surprise_reads, detector._surprise_columns = reads, {}
        for tier in TIERS:
            batch = detector._surprise(rows, tier)
            assert [float(detector._surprise(row, tier)) for row in rows] == batch.tolist()
    detector.config.surprise_reads, detector._surprise_columns = shipped, {}


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


def _numpy_trajectory_aggregates(trajectories) -> dict:
    """:func:`rftfm.fm.features.trajectory_aggregates` as it was written before its group keys were compiled (stop
    48): the oracle."""
    own, (empty, short, long, truncated) = features._trajectory_columns(trajectories)
    columns, step = own[:-1], own[-1]
    group, reward, _, adv = columns[:4]
    residual, zeroed = features.advantage_consistency(features.groups_per_rollout_step(step, group), reward, adv)
    stats = np.empty((4, len(columns)))
    trajectory_kernel.column_stats(np.ascontiguousarray(columns), stats)
    count, mean, sd, largest = stats
    stat = {name: (None, None) if not k else (features._num(m), features._num(v))
            for name, k, m, v in zip(features._NUMERIC, count.tolist(), mean.tolist(), sd.tolist())}
    absmax = float(largest[3]) if count[3] else None
    return {
        "traj_reward_mean": stat["reward"][0], "traj_reward_std": stat["reward"][1],
        "traj_length_mean": stat["response_length"][0], "traj_length_std": stat["response_length"][1],
        "traj_advantage_std": stat["advantage"][1], "traj_advantage_absmax": features._num(absmax),
        "traj_advantage_residual": residual, "traj_advantage_zeroed": zeroed,
        "traj_repetition_mean": stat["repetition_ratio"][0], "traj_unique_mean": stat["unique_token_ratio"][0],
        "traj_tool_call_rate": stat["tool_call_count"][0], "traj_tool_error_rate": stat["tool_error_count"][0],
        "traj_empty_rate": empty, "traj_short_rate": short, "traj_long_rate": long, "traj_truncated_rate": truncated,
    }


def _trajectories(rng: np.random.Generator, ids: str) -> list:
    """A logged step's records: 2 rollout steps x 8 groups of 8, some rewards missing, some groups sign-flipped;
    group ids small whole numbers, far apart, halves, some or all missing (the last three as duck-typed stand-ins:
    the schema's ids are whole numbers)."""
    out = []
    for step in (5, 6):
        for g in range(8):
            reward = rng.integers(0, 2, 8).astype(float) + rng.normal(0, 0.1, 8)
            adv = (reward - reward.mean()) * (-1.0 if rng.random() < 0.3 else 1.0)
            gid = {"small": g, "far": 1000 * g + 7, "halves": g / 2, "missing": None if g == 3 else g}.get(ids)
            for k in range(8):
                missing_reward = rng.random() < 0.05
                out.append((TrajectoryRecord if ids in ("small", "far") else SimpleNamespace)(
                    run_id="r", rollout_step=step, prompt_id=f"p{g}", group_id=gid,
                    reward=None if missing_reward else float(reward[k]), advantage=float(adv[k]),
                    response_length=int(rng.integers(1, 40)), repetition_ratio=float(rng.random()),
                    unique_token_ratio=float(rng.random()), tool_call_count=int(rng.integers(0, 3)),
                    tool_error_count=int(rng.integers(0, 2)),
                    flags=TrajectoryFlags(truncated=bool(rng.random() < 0.2), short_response=bool(rng.random() < 0.1)),
                ))
    return out


@pytest.mark.parametrize("ids", ["small", "far", "halves", "missing", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_steps_compiled_aggregates_give_the_numpy_form(ids, seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        trajectories = _trajectories(rng, ids)
        assert features.trajectory_aggregates(trajectories) == _numpy_trajectory_aggregates(trajectories)
        one_step = [t for t in trajectories if t.rollout_step == 5]
        assert features.trajectory_aggregates(one_step) == _numpy_trajectory_aggregates(one_step)


def test_one_records_compiled_cube_row_gives_the_numpy_form():
    rng = np.random.default_rng(3)
    for _ in range(200):
        values = rng.normal(0.4, 0.5, len(FEATURES))
        values[rng.random(values.size) < 0.2] = np.nan
        values[rng.random(values.size) < 0.03] = np.inf
        record = {f: (None if math.isnan(v) else float(v)) for f, v in zip(FEATURES, values)}
        row = np.array([[np.nan if record[f] is None else record[f] for f in FEATURES]])  # the numpy form (stop 48)
        np.testing.assert_array_equal(record_row(record), with_derived(np.where(np.isfinite(row), row, np.nan)))


def test_the_compiled_invariant_update_gives_the_numpy_form():
    rng = np.random.default_rng(4)
    records = np.abs(rng.normal(0, 2e-3, (120, len(CUBE_SIGNALS))))
    records[rng.random(records.shape) < 0.15] = np.nan
    records[rng.random(records.shape) < 0.02] = np.inf
    held, numpy_held = np.zeros(len(invariants.INVARIANT_LIMITS)), np.zeros(len(invariants.INVARIANT_LIMITS))
    for record in records:
        values = record[invariants.COLUMNS]
        expected = invariants.units(values, numpy_held)
        numpy_held = numpy_held + invariants.holds(values)
        np.testing.assert_array_equal(invariants.advance_one(record, held), expected)
        np.testing.assert_array_equal(held, numpy_held)


@pytest.mark.parametrize("runs", [1, 5])
def test_the_compiled_stall_streak_gives_the_numpy_form(runs):
    rng = np.random.default_rng(runs)
    accuracy = rng.choice([0.25, 0.5, 0.75, np.nan], (150, runs), p=[0.4, 0.3, 0.2, 0.1])
    streak, previous, numpy_streak = FlatStreak.new(runs), np.full(runs, np.nan), np.zeros(runs)
    for row in accuracy:
        seen = np.isfinite(row)  # the numpy form (stop 48)
        same = seen & (np.abs(row - previous) < 1e-9)
        numpy_streak = np.where(seen, np.where(same, numpy_streak + 1, 0.0), numpy_streak)
        previous = np.where(seen, row, previous)
        np.testing.assert_array_equal(streak.advance(row), np.where(seen, numpy_streak, np.nan))
    cube = np.stack([accuracy, accuracy], axis=-1)  # a strided view, as the batch path hands in a cube's column
    strided, contiguous = FlatStreak.new(runs), FlatStreak.new(runs)
    for row in cube:
        np.testing.assert_array_equal(strided.advance(row[:, 0]), contiguous.advance(row[:, 0].copy()))
