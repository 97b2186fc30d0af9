"""LightGBM's prepared one-row prediction gives what ``Booster.predict`` gives."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from rftfm.fm.fast_predict import SingleRowPredictor


def test_one_row_predictions_equal_predicts_with_missing_values_and_a_wrong_width_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, lgb.Dataset(x, y), 20)
    rows = rng.normal(size=(50, 6))
    rows[rng.random(rows.shape) < 0.3] = np.nan
    predictor = SingleRowPredictor(booster)
    np.testing.assert_array_equal([predictor(r[None, :]) for r in rows], booster.predict(rows))
    with pytest.raises(ValueError, match="5 features for a model of 6"):
        predictor(rows[0, :5])


def test_a_detector_with_prepared_predictions_copies_and_pickles():
    import copy
    import pickle

    from rftfm.fm.detect import Detector
    from rftfm.records import StepRecord

    detector = Detector.load_default()
    detector.reset("r")
    for step in range(1, 4):
        detector.observe(StepRecord(run_id="r", step=step, reward_mean=0.3, reward_std=0.4, kl=0.01 * step))
    assert detector._single_row  # the live path prepared its model's one-row prediction
    clones = [copy.deepcopy(detector), pickle.loads(pickle.dumps(detector))]
    record = StepRecord(run_id="r", step=4, reward_mean=0.3, reward_std=0.4, kl=0.04)
    detector.observe(record)
    for clone in clones:
        clone.observe(record)
        assert clone.last_score == pytest.approx(detector.last_score, rel=1e-12)
