"""Calibrated channels alarm on records in a row (rftfm.fm.confirm)."""

import math

import numpy as np

from rftfm.fm.confirm import confirm_one, confirmed


def test_a_one_record_spike_is_not_confirmed_and_a_held_one_is():
    stat = np.array([[0.2, 3.0, 0.1, 0.3, 2.0, 2.5, 4.0]])
    steps = np.arange(1, 8)[None, :]
    out = confirmed(stat, steps, 2)
    assert math.isnan(out[0, 0])  # the run's first record has nothing before it to confirm it
    np.testing.assert_allclose(out[0, 1:], [0.2, 0.1, 0.1, 0.3, 2.0, 2.5])
    assert not (out[0, :4] > 1).any() and (out[0, 5:] > 1).all()


def test_records_are_the_runs_own_gaps_skipped_and_nan_unjudged():
    stat = np.array([[1.5, np.nan, 2.0, 0.5, np.nan, 3.0, 3.0]])
    steps = np.array([[1, 0, 3, 4, 5, 6, 7]])  # the second step was not logged (logging_steps > 1)
    out = confirmed(stat, steps, 2)
    assert math.isnan(out[0, 1])  # absent
    assert out[0, 2] == 1.5  # confirmed by step 1, the record before it
    assert out[0, 3] == 0.5
    assert math.isnan(out[0, 4]) and math.isnan(out[0, 5])  # a record not judged leaves its window unjudged
    assert out[0, 6] == 3.0


def test_one_record_is_every_record_alone():
    stat = np.array([[0.5, 2.0, np.nan]])
    steps = np.array([[1, 2, 0]])
    out = confirmed(stat, steps, 1)
    np.testing.assert_array_equal(out[0, :2], [0.5, 2.0])
    assert math.isnan(out[0, 2])


def test_the_streaming_form_gives_the_cube_form():
    rng = np.random.default_rng(0)
    stat = rng.normal(1.0, 1.0, size=(3, 40))
    stat[rng.random(stat.shape) < 0.1] = np.nan
    steps = np.where(rng.random(stat.shape) < 0.8, np.arange(1, 41), 0)
    for records in (1, 2, 3):
        cube = confirmed(stat, steps, records)
        for r in range(3):
            history = []
            for j in np.flatnonzero(steps[r] > 0):
                history.append(stat[r, j])
                live = confirm_one(history, records)
                assert (math.isnan(live) and math.isnan(cube[r, j])) or live == cube[r, j]
