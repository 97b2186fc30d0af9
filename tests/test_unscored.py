"""The unscored-completion channel: a batch that loses completions to no reward function scoring them (a verifier
that gives up and returns None) alarms where per-completion records or the trainer tell it; a step-metric log never
does."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import polars as pl
import pytest
from detector_fixtures import stream

from rftfm.fm import unscored
from rftfm.fm.detect import Detector, describe
from rftfm.fm.features import features_frame, step_features
from rftfm.integrations.trl_advantages import unscored_share
from rftfm.records import StepRecord, TrajectoryRecord


def _rows(none_from: int | None, share: float = 0.4, steps: int = 30, handed: bool = True) -> list[dict]:
    """A TRL-like run with one 0 / 1 verifier; from ``none_from`` the trainer hands over ``share`` unscored."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(1, steps + 1):
        accuracy = float(np.clip(0.3 + 0.008 * s + rng.normal(0, 0.04), 0.05, 0.95))
        extra = {"rewards/accuracy/mean": accuracy}
        if handed:
            extra[unscored.SIGNAL] = share if none_from is not None and s >= none_from else 0.0
        rows.append({
            "run_id": "trl", "step": s, "reward_mean": accuracy, "reward_std": 0.45 + rng.normal(0, 0.01),
            "kl": 0.002 * s * float(np.exp(rng.normal(0, 0.1))), "entropy": 0.9 - 0.003 * s + rng.normal(0, 0.01),
            "policy_loss": rng.normal(0, 0.01), "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 40 * float(np.exp(rng.normal(0, 0.03))), "extra": extra,
        })
    return rows


def test_the_share_counts_missing_rewards_and_a_step_without_any_reward_says_nothing():
    assert unscored.share_of_rewards([1.0, None, 0.0, math.nan]) == pytest.approx(0.5)
    assert unscored.share_of_rewards([None, None]) is None and unscored.share_of_rewards([]) is None
    assert unscored.units(None) == 0.0 and unscored.units(0.0) == 0.0
    assert unscored.units(1 / 32) < 1.0 < unscored.units(2 / 32)  # one completion in 32: a sporadic time-out
    state = unscored.UnscoredState()
    assert [state.advance(v, s) > 1.0 for s, v in enumerate((0.0, None, 0.25, 0.3, 0.0), start=1)] == [
        False, False, True, True, False
    ]
    assert state.since == 0 and state.copy() == state


def test_features_take_the_share_from_the_completions_else_from_what_the_trainer_handed_over():
    steps = pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "reward_mean": [0.5, 0.4, 0.3],
                          f"extra.{unscored.SIGNAL}": [0.0, 0.5, 0.25]})
    handed = features_frame(steps, None)
    assert handed[unscored.SIGNAL].to_list() == [0.0, 0.5, 0.25]
    trajectories = pl.DataFrame({
        "run_id": ["r"] * 8, "rollout_step": [1, 1, 1, 1, 2, 2, 3, 3],
        "reward": [1.0, 0.0, None, float("nan"), 1.0, 0.0, None, None],
    })
    read = features_frame(steps, trajectories)
    # step 3's records carry no reward at all: nothing to tell a gap from, so the handed-over value stands
    assert read[unscored.SIGNAL].to_list() == [0.5, 0.0, 0.25]
    without = features_frame(steps.drop(f"extra.{unscored.SIGNAL}"), None)
    assert without[unscored.SIGNAL].null_count() == 3


def test_live_features_read_the_completions_rewards_else_the_records_extra():
    step = StepRecord(run_id="r", step=4, reward_mean=0.5, extra={unscored.SIGNAL: 0.125})
    assert step_features(step, [])[unscored.SIGNAL] == 0.125
    records = [TrajectoryRecord(run_id="r", rollout_step=4, prompt_id="p", group_id=0, reward=r)
               for r in (1.0, None, 0.0, None)]
    assert step_features(step, records)[unscored.SIGNAL] == pytest.approx(0.5)
    assert step_features(StepRecord(run_id="r", step=4, reward_mean=0.5), [])[unscored.SIGNAL] is None


def test_the_shipped_detector_alarms_at_the_first_record_that_loses_completions_and_names_the_share():
    detector = Detector.load_default()
    scores, alarms = stream(detector, _rows(none_from=None))
    assert not alarms and max(scores) < 1.0
    scores, alarms = stream(detector, _rows(none_from=12, share=0.03))  # under a twentieth: not this channel's
    assert not any(e.signal == unscored.SIGNAL for a in alarms for e in a.evidence)
    scores, alarms = stream(detector, _rows(none_from=12, share=0.4))
    assert alarms and alarms[0].step == 12 and scores[11] >= 8.0
    first = alarms[0].evidence[0]
    assert first.signal == unscored.SIGNAL and first.since_step == 12 and first.value == pytest.approx(0.4)
    assert describe(first).startswith("40 % of completions scored by no reward function since step 12")
    detector.observe(StepRecord(**_rows(none_from=None)[10]))  # rolled back to step 11: the batch is whole again
    assert detector.last_score < 1.0


def test_a_log_of_step_metrics_alone_never_judges_it():
    detector = Detector.load_default()
    _, alarms = stream(detector, _rows(none_from=12, handed=False))
    assert not any(e.signal == unscored.SIGNAL for a in alarms for e in a.evidence)


def test_the_offline_channel_gives_the_live_units():
    rows = _rows(none_from=12)
    state = unscored.UnscoredState()
    live = [state.advance(r["extra"][unscored.SIGNAL], r["step"]) for r in rows]
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    features = features_frame(pl.DataFrame(flat), None)
    np.testing.assert_allclose(unscored.runs_units(features, ["trl"], 30)[0], live)


def test_the_shipped_diagnoser_names_a_verifier_that_gives_up_from_the_unscored_share():
    from rftfm.fm.diagnose import Diagnoser

    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in _rows(none_from=12)]
    history = features_frame(pl.DataFrame(flat), None)
    diagnosis = Diagnoser.load_default().diagnose(history, "trl", 13)
    assert not diagnosis.unknown and diagnosis.ranked[0].fault_type == "reward_none"
    assert diagnosis.ranked[0].probability == pytest.approx(1.0)
    assert diagnosis.evidence[0].signal == unscored.SIGNAL and diagnosis.evidence[0].since_step == 12
    assert "scored by no reward function" in diagnosis.summary
    assert unscored.run_evidence(history, "trl", 11) is None


def test_a_trl_trainers_share_is_of_the_completions_every_function_left_unscored():
    class Trainer:  # what a TRL GRPOTrainer keeps of its latest batch
        _logs = {"rewards": {"accuracy": deque([1.0, math.nan, math.nan, 0.0]),
                             "format": deque([0.5, 0.5, math.nan, math.nan])}}

    assert unscored_share(Trainer()) == pytest.approx(0.25)
    Trainer._logs = {"rewards": {"accuracy": deque([1.0, math.nan]), "format": deque([0.5])}}
    assert unscored_share(Trainer()) is None  # functions of different lengths: not read
    assert unscored_share(object()) is None


def test_a_plain_trl_run_with_one_verifier_that_starts_giving_up_is_caught_at_that_step(tmp_path):
    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.testing import user_run as ur

    flaky = ur.FlakyVerifier(onset=7, fraction=0.5)
    trainer = ur.user_trainer(tmp_path / "flaky", steps=10, seed=0, callbacks=[flaky], reward_funcs=[flaky.reward])
    loop = RFTFMCallback.attach(trainer, report=False)
    trainer.train()
    store = loop.controller.store
    alarms = [e for e in store.events(kind="alarm") if e["payload"]["evidence"][0]["signal"] == unscored.SIGNAL]
    assert alarms and alarms[0]["step"] == 7 and not any(
        e["step"] < 7 for e in store.events(kind="alarm")
    )
    assert store.events(kind="diagnosis")[0]["payload"]["ranked"][0]["fault_type"] == "reward_none"
    # the plain trainer has no knob that re-asks the verifier: reported, trained on
    assert trainer.state.global_step == 10 and loop.controller.mode != "halted"
