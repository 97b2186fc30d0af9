"""The reward-identity channel: a TRL run's logged reward is the weighted sum of its reward functions' means until a
function starts returning None for some completions; the weights are fitted on the run's own first records."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from detector_fixtures import stream

from rftfm.fm import reward_identity as ri
from rftfm.fm.detect import Detector, describe
from rftfm.fm.features import features_frame
from rftfm.records import StepRecord

# Three records of a real TRL GRPO run with three reward functions (../shared/real-logs/trl, the DAPO terminal log):
# reward = 4 x mc_idx + 1 x think_format + 1 x mdi, weights the log never states.
DAPO = [(1.75, (0.65, 0.15, -1.0)), (3.6, (1.0, 0.0, -0.4)), (2.7, (0.75, 0.0, -0.3)), (1.9, (0.6, 0.1, -0.6))]


def test_parts_are_the_per_function_means_sorted_by_function_name_and_none_when_one_is_missing():
    metrics = {"rewards/think/mean": 0.1, "rewards/acc/mean": 0.5, "rewards/acc/std": 0.4, "reward": 0.6}
    assert ri.parts_of(metrics) == (0.5, 0.1)
    assert ri.parts_of({"rewards/acc": 0.5, "rewards/fmt": 1.0}) == (0.5, 1.0)  # TRL < 0.17 keys
    assert ri.parts_of({"reward": 0.6}) is None
    assert ri.parts_of({"rewards/acc/mean": None, "rewards/fmt/mean": 1.0}) is None


def test_weights_fitted_on_the_first_records_hold_a_real_runs_identity_and_a_swallowed_none_breaks_it():
    state = ri.IdentityState()
    units = [state.advance(total, parts, step) for step, (total, parts) in enumerate(DAPO, start=1)]
    assert units == [0.0] * 4 and np.allclose(state.weights, [4.0, 1.0, 1.0])  # armed by its 4th record
    assert state.advance(4 * 0.7 + 0.2 - 0.5, (0.7, 0.2, -0.5), 5) < 1e-9
    # 30 % of completions unscored by the first function: nansum gives them 0 in reward, its own mean skips them
    assert state.advance(4 * 0.7 * 0.7 + 0.2 - 0.5, (0.7, 0.2, -0.5), 6) > 100
    e = state.evidence()
    assert e.reward_identity and e.since_step == 6 and e.value < e.expected and e.direction == "down"
    assert "a reward function returns None" in describe(e) and "since step 6" in describe(e)
    assert state.advance(4 * 0.6 + 0.1 - 0.5, (0.6, 0.1, -0.5), 7) < 1.0 and state.since == 0  # holds again


def test_the_identity_is_not_trusted_before_the_weights_are_determined_nor_where_the_first_records_break_it():
    state = ri.IdentityState()  # a format reward stuck at 1 and an accuracy at 0: the weights are not determined
    for step in range(1, 6):
        assert state.advance(0.5, (0.0, 1.0), step) == 0.0
    assert state.weights is None and not state.disarmed
    state.advance(0.8, (0.3, 1.0), 6)  # now they are: 1 x accuracy + 0.5 x format
    assert np.allclose(state.weights, [1.0, 0.5]) and state.advance(0.9, (0.4, 1.0), 7) < 1e-9
    broken = ri.IdentityState()  # a function that skips some completions by design: never armed
    for step, (total, parts) in enumerate([(0.5, (0.2, 1.0)), (0.9, (0.3, 1.0)), (0.4, (0.6, 0.5)), (1.0, (0.1, 0.9))]):
        broken.advance(total, parts, step + 1)
    assert broken.disarmed and broken.advance(5.0, (0.1, 0.1), 9) == 0.0
    known = ri.IdentityState()
    known.know_weights([1.0, 0.5])  # the callback read trainer.reward_weights: judged from the first record
    assert known.advance(0.2, (0.3, 1.0), 1) > 100
    assert known.advance(0.5, (0.3, 1.0, 0.2), 2) == 0.0 and known.disarmed  # a function added: weights stale


def _trl_rows(none_from: int | None, steps: int = 40) -> list[dict]:
    """A TRL-like run with an accuracy and a format reward (weights 1 and 0.5) whose verifier returns None for 40 %
    of completions from ``none_from``."""
    rng = np.random.default_rng(5)
    rows = []
    for s in range(1, steps + 1):
        accuracy = float(np.clip(0.3 + 0.008 * s + rng.normal(0, 0.04), 0.05, 1))
        fmt = float(np.clip(0.6 + 0.01 * s + rng.normal(0, 0.05), 0, 1))
        scored = 0.6 if none_from is not None and s >= none_from else 1.0
        rows.append({
            "run_id": "trl", "step": s, "reward_mean": accuracy * scored + 0.5 * fmt,
            "reward_std": 0.45 + rng.normal(0, 0.01), "kl": 0.002 * s * float(np.exp(rng.normal(0, 0.1))),
            "entropy": 0.9 - 0.003 * s + rng.normal(0, 0.01), "policy_loss": rng.normal(0, 0.01),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 40 * float(np.exp(rng.normal(0, 0.03))),
            "extra": {"rewards/accuracy/mean": accuracy, "rewards/format/mean": fmt},
        })
    return rows


def test_the_shipped_detector_alarms_at_the_first_record_that_breaks_it_with_it_first_and_a_rollback_forgets_it():
    detector = Detector.load_default()
    scores, alarms = stream(detector, _trl_rows(none_from=None))
    assert not alarms and max(scores) < 1.0
    scores, alarms = stream(detector, _trl_rows(none_from=25))
    assert alarms and alarms[0].step == 25 and scores[24] > 10
    first = alarms[0].evidence[0]
    assert first.reward_identity and first.since_step == 25 and first.value < first.expected
    detector.observe(StepRecord(**_trl_rows(none_from=None)[21]))  # rolled back to step 22: holds again
    assert detector.last_score < 1.0


def test_the_offline_channel_gives_the_live_units():
    rows = _trl_rows(none_from=25)
    state = ri.IdentityState()
    live = [state.advance(r["reward_mean"], ri.parts_of(r["extra"]), r["step"]) for r in rows]
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    steps = pl.DataFrame(flat)
    features = features_frame(steps, None)
    np.testing.assert_allclose(ri.runs_units(features, ["trl"], 40)[0], live)
    bare = features_frame(steps.drop("extra.rewards/accuracy/mean", "extra.rewards/format/mean"), None)
    assert bare[ri.PARTS].null_count() == 40 and ri.runs_units(bare, ["trl"], 40).max() == 0.0  # not judged


def test_watching_a_trl_log_whose_verifier_starts_returning_none_alarms_at_that_step(tmp_path):
    from typer.testing import CliRunner

    from rftfm.cli import app
    from rftfm.cli.watch import EXIT_ALARM

    def log(none_from):
        lines = []
        for r in _trl_rows(none_from=none_from):
            entry = {"loss": r["policy_loss"], "grad_norm": r["grad_norm"], "learning_rate": 1e-6,
                     "completions/mean_length": r["completion_length_mean"], "reward": r["reward_mean"],
                     "reward_std": r["reward_std"], "kl": r["kl"], "entropy": r["entropy"], "step": r["step"],
                     **r["extra"]}
            lines.append(json.dumps(entry))
        path = tmp_path / f"run-{none_from}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path

    runner = CliRunner()
    assert runner.invoke(app, ["watch", str(log(None)), "--format", "trl"]).exit_code == 0
    summary = tmp_path / "summary.json"
    result = runner.invoke(app, ["watch", str(log(30)), "--format", "trl", "--json", str(summary)])
    assert result.exit_code == EXIT_ALARM, result.output
    assert json.loads(summary.read_text())["episodes"][0]["start_step"] == 30
    assert "weighted means" in " ".join(result.output.split())


@pytest.mark.parametrize("weights", [(1.0, 1.0), (4.0, 1.0)])
def test_logging_steps_averages_keep_the_identity(weights):
    rng = np.random.default_rng(0)
    state = ri.IdentityState()
    for step in range(1, 30):  # each logged record the mean of 5 steps' metrics, as TRL logs with logging_steps=5
        parts = rng.uniform(0, 1, (5, 2))
        total = float((parts @ np.array(weights)).mean())
        assert state.advance(total, tuple(parts.mean(axis=0)), step) < 1e-6


def test_the_shipped_diagnoser_names_a_verifier_returning_none_from_the_broken_identity():
    from rftfm.fm.diagnose import Diagnoser

    rows = _trl_rows(none_from=25)
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    history = features_frame(pl.DataFrame(flat), None)
    diagnoser = Diagnoser.load_default()
    diagnosis = diagnoser.diagnose(history, "trl", 26)
    assert not diagnosis.unknown and diagnosis.ranked[0].fault_type == "reward_none"
    assert diagnosis.ranked[0].probability == pytest.approx(1.0)
    assert diagnosis.evidence[0].reward_identity and diagnosis.evidence[0].since_step == 25
    assert "returns None" in diagnosis.summary
    assert ri.run_evidence(history, "trl", 24) is None  # before it broke: no such evidence
    healthy = diagnoser.diagnose(features_frame(pl.DataFrame(flat[:24]), None), "trl", 24)
    assert not any(e.reward_identity for e in healthy.evidence)


def test_the_monitor_keeps_the_reward_functions_means_for_its_diagnoses():
    from rftfm.fm.diagnose import Diagnoser
    from rftfm.fm.monitor import RunMonitor

    monitor = RunMonitor("trl", Detector.load_default(), Diagnoser.load_default())
    diagnoses = [monitor.observe(StepRecord(**r), [])[1] for r in _trl_rows(none_from=25)]
    first = next(d for d in diagnoses if d is not None)
    assert first.step == 25 and first.ranked[0].fault_type == "reward_none"


def test_known_reward_weights_arm_it_from_the_first_record_in_the_detector_and_the_diagnoser():
    from rftfm.fm.diagnose import Diagnoser

    class Trainer:  # what a TRL GRPOTrainer exposes
        reward_func_names = ["format", "accuracy"]
        reward_weights = np.array([0.5, 1.0])

    weights = ri.trainer_weights(Trainer())
    assert weights == {"format": 0.5, "accuracy": 1.0}
    rows = _trl_rows(none_from=1)  # a verifier returning None from the first step: the fit never arms
    detector = Detector.load_default()
    assert not any(e.reward_identity for a in stream(detector, rows)[1] for e in a.evidence)
    detector.know_reward_weights(weights)
    scores, alarms = stream(detector, rows)
    assert alarms[0].step == 1 and alarms[0].evidence[0].reward_identity
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    diagnoser = Diagnoser.load_default()
    diagnoser.know_reward_weights(weights)
    assert diagnoser.diagnose(features_frame(pl.DataFrame(flat[:3]), None), "trl", 3).ranked[0].fault_type == (
        "reward_none"
    )
    detector.know_reward_weights(None)


def test_a_plain_trl_run_whose_verifier_starts_returning_none_is_caught_at_that_step_and_not_halted(tmp_path):
    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.testing import user_run as ur

    flaky = ur.FlakyVerifier(onset=7, fraction=0.5)
    trainer = ur.user_trainer(tmp_path / "flaky", steps=12, seed=0, callbacks=[flaky],
                              reward_funcs=[flaky.reward, ur.format_reward], reward_weights=[1.0, 0.5])
    loop = RFTFMCallback.attach(trainer, report=False)
    trainer.train()
    store = loop.controller.store
    start = [e["payload"] for e in store.events(kind="run")]
    assert {"event": "reward weights", "read": {"reward": 1.0, "format_reward": 0.5}} in start
    led = [e for e in store.events(kind="alarm") if e["payload"]["evidence"][0].get("reward_identity")]
    assert led and led[0]["step"] == 7
    assert store.events(kind="diagnosis")[0]["payload"]["ranked"][0]["fault_type"] == "reward_none"
    # the plain trainer has no knob that re-asks the verifier, and nothing shows the run getting worse: reported only
    assert trainer.state.global_step == 12 and loop.controller.mode != "halted"
    assert "against its functions' weighted means (reward x1, format_reward x0.5)" in loop.narrative


def test_a_log_read_at_once_gives_each_record_its_own_identity_evidence():
    rows = _trl_rows(none_from=25)
    detector = Detector.load_default()
    detector.reset("trl")
    records = [(r["step"], features) for r in rows for features in [_features(r)]]
    alarms = [a for a in detector.observe_many("trl", records) if a is not None]
    first = alarms[0].evidence[0]
    state = ri.IdentityState()
    for r in rows[:25]:
        state.advance(r["reward_mean"], ri.parts_of(r["extra"]), r["step"])
    assert alarms[0].step == 25 and first.value == pytest.approx(state.last[0]) and first.expected == pytest.approx(
        state.last[1]
    )


def _features(row: dict) -> dict:
    from rftfm.fm.features import step_features

    return step_features(StepRecord(**row), [])


def test_a_record_missing_one_functions_mean_is_not_judged_and_does_not_crash_the_channel():
    state = ri.IdentityState()
    assert state.advance(0.5, (0.5, None), 1) == 0.0  # a feature dict from a frame with another run's columns
    assert state.advance(0.5, (0.5, float("nan")), 2) == 0.0 and state.rows == []
    known = ri.IdentityState()
    known.know_weights([1.0, 0.5])
    assert known.advance(0.2, (None, 1.0), 1) == 0.0 and known.since == 0


def _history(rows: list[dict]) -> pl.DataFrame:
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    return features_frame(pl.DataFrame(flat), None)


def test_an_identity_held_over_several_functions_is_read_as_holding_and_a_single_function_never_is():
    healthy = _history(_trl_rows(none_from=None))
    assert ri.reading(healthy, "trl", 30)[1]
    assert not ri.reading(healthy, "trl", 3)[1]  # not armed yet (4 records fit the weights)
    broken = _history(_trl_rows(none_from=25))
    assert ri.reading(broken, "trl", 24) == (None, True)
    evidence, holds = ri.reading(broken, "trl", 26)  # one replay: the broken identity's evidence, and not holding
    assert not holds and evidence is not None and evidence.since_step == 25
    single = [r | {"extra": {"rewards/accuracy/mean": r["extra"]["rewards/accuracy/mean"]},
                   "reward_mean": r["extra"]["rewards/accuracy/mean"]} for r in _trl_rows(none_from=None)]
    assert not ri.reading(_history(single), "trl", 30)[1]  # TRL leaves an unscored completion out of both sides


def test_the_diagnoser_rules_out_a_verifier_returning_none_where_the_identity_holds_over_several_functions():
    from rftfm.fm.diagnose import Diagnoser

    diagnoser = Diagnoser.load_default()
    classes = diagnoser.classes
    prob = np.full((2, len(classes)), 0.02)
    prob[:, classes.index("reward_none")] = 0.6
    prob /= prob.sum(axis=1, keepdims=True)
    out, unknown = diagnoser.apply_identity_holds(prob, np.zeros(2, dtype=bool), [True, False])
    assert out[0, classes.index("reward_none")] == 0.0 and out[0].sum() == pytest.approx(1.0)
    assert unknown[0]  # what is left is no family the model was sure of: it abstains
    np.testing.assert_array_equal(out[1], prob[1])  # a run where it does not hold keeps the model's ranking
    history = _history(_trl_rows(none_from=None))
    diagnosis = diagnoser.diagnose(history, "trl", 30)
    assert all(h.fault_type != "reward_none" or h.probability == 0.0 for h in diagnosis.ranked)
