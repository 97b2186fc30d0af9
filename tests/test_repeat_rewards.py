"""The repeat-reward channel: identical completions of one prompt scored differently (a noisy verifier, a flaky tool)
alarm where per-completion records or the trainer tell it, from the run's first batch; a deterministic verifier
never does, and a reward meant to be stochastic can say so."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import polars as pl
import pytest
from detector_fixtures import stream

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import repeat_rewards
from rftfm.fm.detect import Detector, describe
from rftfm.fm.features import features_frame, step_features
from rftfm.integrations.trl_advantages import repeat_disagreements
from rftfm.records import StepRecord, TrajectoryRecord

SIGNAL = repeat_rewards.SIGNAL


def _rows(count_from: int | None, count: float = 3.0, steps: int = 30, handed: bool = True) -> list[dict]:
    """A TRL-like run with one 0 / 1 verifier; from ``count_from`` the trainer hands over ``count`` repeated sets
    scored differently per record (else 0: its repeated completions were scored alike)."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(1, steps + 1):
        accuracy = float(np.clip(0.3 + 0.008 * s + rng.normal(0, 0.04), 0.05, 0.95))
        extra = {"rewards/accuracy/mean": accuracy}
        if handed:
            extra[SIGNAL] = count if count_from is not None and s >= count_from else 0.0
        rows.append({
            "run_id": "trl", "step": s, "reward_mean": accuracy, "reward_std": 0.45 + rng.normal(0, 0.01),
            "kl": 0.002 * s * float(np.exp(rng.normal(0, 0.1))), "entropy": 0.9 - 0.003 * s + rng.normal(0, 0.01),
            "policy_loss": rng.normal(0, 0.01), "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 40 * float(np.exp(rng.normal(0, 0.03))), "extra": extra,
        })
    return rows


def _flat(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
                         for r in rows])


def test_a_batch_counts_the_repeated_sets_whose_rewards_differ():
    prompts = ["p", "p", "p", "p", "q", "q", "r"]
    completions = ["7", "7", "8", "8", "x", "x", "7"]
    assert repeat_rewards.disagreements(prompts, completions, [1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 1.0]) == 0.0
    assert repeat_rewards.disagreements(prompts, completions, [1.0, 0.3, 0.0, 0.0, 0.5, 0.9, 1.0]) == 2.0
    # float rounding is no disagreement; an unscored completion is the unscored rule's
    assert repeat_rewards.disagreements(prompts, completions, [1.0, 1.0 + 1e-12, 0, 0, 0.5, None, 1.0]) == 0.0
    # the same text for two prompts is no repeat, and neither is a batch without one
    assert repeat_rewards.disagreements(["p", "q"], ["7", "7"], [1.0, 0.0]) is None
    assert repeat_rewards.disagreements([], [], []) is None
    assert repeat_rewards.disagreements(["p"], ["7", "7"], [1.0, 0.0]) is None  # lengths disagree: not read
    chat = [{"role": "assistant", "content": "7"}]
    assert repeat_rewards.disagreements(["p", "p"], [chat, list(chat)], [1.0, 0.0]) == 1.0


def test_one_stray_disagreement_is_not_flagged_two_in_three_records_are():
    state = repeat_rewards.RepeatState()
    flagged = [state.advance(v, s) > 1.0 for s, v in enumerate((1.0, None, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0), start=1)]
    assert flagged == [False, False, False, False, False, False, True, False]
    assert state.since == 0 and state.copy() == state
    assert repeat_rewards.RepeatState().advance(3.0, 1) == pytest.approx(3.0)  # from the first record on


def test_features_count_from_the_completions_else_take_what_the_trainer_handed_over():
    steps = pl.DataFrame({"run_id": ["r"] * 3, "step": [1, 2, 3], "reward_mean": [0.5, 0.4, 0.3],
                          f"extra.{SIGNAL}": [0.0, 4.0, 2.0]})
    assert features_frame(steps, None)[SIGNAL].to_list() == [0.0, 4.0, 2.0]
    trajectories = pl.DataFrame({
        "run_id": ["r"] * 8, "rollout_step": [1, 1, 1, 1, 2, 2, 3, 3],
        "prompt_id": ["p", "p", "q", "q", "p", "p", "p", "q"],
        "completion": ["7", "7", "a", "a", "7", "7", "7", "7"], "reward": [1.0, 0.2, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],
    })
    # step 3 has no repeated completion of one prompt: the handed-over value stands
    assert features_frame(steps, trajectories)[SIGNAL].to_list() == [1.0, 0.0, 2.0]
    assert features_frame(steps.drop(f"extra.{SIGNAL}"), None)[SIGNAL].null_count() == 3


def test_live_features_count_the_completions_else_read_the_records_extra():
    step = StepRecord(run_id="r", step=4, reward_mean=0.5, extra={SIGNAL: 2.0})
    assert step_features(step, [])[SIGNAL] == 2.0
    records = [TrajectoryRecord(run_id="r", rollout_step=4, prompt_id="p", group_id=0, reward=r, completion=c)
               for r, c in ((1.0, "7"), (0.4, "7"), (0.0, "8"), (0.0, "8"))]
    assert step_features(step, records)[SIGNAL] == 1.0
    textless = [TrajectoryRecord(run_id="r", rollout_step=4, prompt_id="p", group_id=0, reward=1.0)] * 2
    assert step_features(step, textless)[SIGNAL] is None


def test_the_shipped_detector_alarms_from_the_first_record_and_says_what_it_saw():
    detector = Detector.load_default()
    scores, alarms = stream(detector, _rows(count_from=None))
    assert not alarms and max(scores) < 1.0
    _, alarms = stream(detector, _rows(count_from=12, count=1.0))  # one set a record: two over three records
    assert alarms and alarms[0].step == 13
    scores, alarms = stream(detector, _rows(count_from=1, count=3.0))  # a noisy verifier from the start
    assert alarms and alarms[0].step == 1 and scores[0] >= 3.0
    first = alarms[0].evidence[0]
    assert first.signal == SIGNAL and first.since_step == 1 and first.value == 3.0
    assert describe(first).startswith("identical completions of one prompt scored differently in 3 sets")
    # the rule alone carries these alarms: its evidence alone, so that a repair that cannot make the verifier
    # deterministic (averaging its calls) sees no other symptom (rftfm.fm.playbook.UPSTREAM_SIGNALS)
    assert all(e.signal == SIGNAL for a in alarms for e in a.evidence)


def test_a_reward_meant_to_be_stochastic_and_a_log_of_step_metrics_are_not_judged():
    detector = Detector.load_default()
    detector.know_stochastic_reward(True)
    _, alarms = stream(detector, _rows(count_from=1))
    assert not any(e.signal == SIGNAL for a in alarms for e in a.evidence)
    _, alarms = stream(Detector.load_default(), _rows(count_from=1, handed=False))
    assert not any(e.signal == SIGNAL for a in alarms for e in a.evidence)


def test_the_offline_channel_gives_the_live_units():
    rows = _rows(count_from=12, count=1.0)
    state = repeat_rewards.RepeatState()
    live = [state.advance(r["extra"][SIGNAL], r["step"]) for r in rows]
    np.testing.assert_allclose(repeat_rewards.runs_units(features_frame(_flat(rows), None), ["trl"], 30)[0], live)


def test_the_shipped_diagnoser_keeps_only_faults_that_score_repeats_apart():
    from rftfm.fm.diagnose import Diagnoser

    history = features_frame(_flat(_rows(count_from=1)), None)
    diagnosis = Diagnoser.load_default().diagnose(history, "trl", 3)
    apart = {name for name, t in FAULT_TYPES.items() if t.scores_repeats_apart}
    assert {"reward_noise", "tool_failure", "tool_corruption"} <= apart
    assert not diagnosis.unknown and diagnosis.ranked[0].fault_type in apart
    assert sum(h.probability for h in diagnosis.ranked if h.fault_type in apart) == pytest.approx(1.0, abs=1e-3)
    assert diagnosis.evidence[0].signal == SIGNAL and "scored differently" in diagnosis.summary
    stochastic = Diagnoser.load_default()
    stochastic.know_stochastic_reward(True)
    assert not any(e.signal == SIGNAL for e in stochastic.diagnose(history, "trl", 3).evidence)


def test_a_trl_trainers_count_is_of_its_combined_rewards():
    class Trainer:  # what a TRL GRPOTrainer keeps of its latest batch
        reward_weights = None
        _logs = {"prompt": deque(["p", "p", "p", "p"]), "completion": deque(["7", "7", "8", "8"]),
                 "rewards": {"accuracy": deque([1.0, 1.0, 0.0, 0.0]), "judge": deque([0.5, 0.9, 0.2, 0.2])}}

    assert repeat_disagreements(Trainer()) == 1.0
    Trainer._logs["rewards"]["judge"] = deque([0.5, 0.5, 0.2, math.nan])  # a function gave up on one: it differs
    assert repeat_disagreements(Trainer()) == 1.0
    Trainer._logs["completion"] = deque(["7", "8", "9", "0"])
    assert repeat_disagreements(Trainer()) is None  # nothing repeats
    Trainer._logs["completion"] = deque(["7"])
    assert repeat_disagreements(Trainer()) is None  # lengths disagree: not read
    assert repeat_disagreements(object()) is None


def test_a_plain_trl_run_with_a_noisy_verifier_from_its_first_step_is_caught_early(tmp_path):
    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.testing import user_run as ur

    noisy = ur.NoisyVerifier(onset=1, sd=0.5)
    trainer = ur.user_trainer(tmp_path / "noisy", steps=8, seed=0, callbacks=[noisy], reward_funcs=[noisy.reward])
    loop = RFTFMCallback.attach(trainer, report=False)
    trainer.train()
    store = loop.controller.store
    assert {"event": "repeated completions", "judged": True} in [e["payload"] for e in store.events(kind="run")]
    alarms = [e for e in store.events(kind="alarm") if e["payload"]["evidence"][0]["signal"] == SIGNAL]
    assert alarms and alarms[0]["step"] <= 3
    assert store.events(kind="diagnosis")[0]["payload"]["ranked"][0]["fault_type"] in {
        name for name, t in FAULT_TYPES.items() if t.scores_repeats_apart
    }
    assert trainer.state.global_step == 8 and loop.controller.mode != "halted"
