"""The advantage invariants read from a plain TRL GRPOTrainer's own completion log: 0 in a healthy user run, an
alarm led by them when the trainer's advantage computation goes wrong mid-run; refused with a reason where TRL's
estimator does not make them hold."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.trainer_utils import IntervalStrategy

from rftfm.integrations import trl_advantages
from rftfm.integrations.trl_callback import RFTFMCallback
from rftfm.testing import user_run as ur

torch.set_num_threads(1)
SIZE = 4


def _trainer(rewards: dict[str, list[float]], advantages: list[float], **attrs) -> SimpleNamespace:
    logs = {"rewards": {k: deque(v) for k, v in rewards.items()}, "advantages": deque(advantages)}
    base = dict(_logs=logs, num_generations=SIZE, reward_weights=torch.ones(len(rewards)), args=SimpleNamespace())
    return SimpleNamespace(**{**base, **attrs})


def _group_advantages(reward: np.ndarray) -> list[float]:
    r = reward.reshape(-1, SIZE)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).ravel().tolist()


def test_weighted_reward_functions_and_unscored_completions_are_read_the_trl_way() -> None:
    fmt = np.array([1, 0, 1, 0, 1, 1, 0, 0], dtype=float)
    correct = np.array([1, 1, 0, 0, np.nan, 1, 0, 1], dtype=float)
    weights = torch.tensor([0.5, 2.0])
    total = np.nansum(np.stack([fmt, correct], 1) * weights.numpy(), axis=1)
    values = trl_advantages.advantage_invariants(
        _trainer({"fmt": fmt.tolist(), "correct": correct.tolist()}, _group_advantages(total), reward_weights=weights)
    )
    assert values["traj_advantage_residual"] == pytest.approx(0.0, abs=1e-9) and values["traj_advantage_zeroed"] == 0
    assert values["advantage_flipped_share"] == 0.0
    flipped = trl_advantages.advantage_invariants(
        _trainer({"fmt": fmt.tolist(), "correct": correct.tolist()}, [-a for a in _group_advantages(total)],
                 reward_weights=weights)
    )
    assert flipped["traj_advantage_residual"] == pytest.approx(1.0)
    assert flipped["advantage_flipped_share"] == 1.0
    rescaled = trl_advantages.advantage_invariants(  # a length-biased normalisation: positive factors, no flip
        _trainer({"fmt": fmt.tolist(), "correct": correct.tolist()},
                 [a * (1 + i) for i, a in enumerate(_group_advantages(total))], reward_weights=weights)
    )
    assert rescaled["traj_advantage_residual"] > 0.01 and rescaled["advantage_flipped_share"] == 0.0


@pytest.mark.parametrize(
    ("attrs", "reason"),
    [
        ({"multi_objective_aggregation": "normalize_then_sum"}, "normalises each reward function apart"),
        ({"num_generations": 1}, "below 2"),
        ({"num_generations_eval": 2, "args": SimpleNamespace(eval_strategy="steps")}, "evaluation batches"),
        ({"num_generations_eval": 2, "args": SimpleNamespace(eval_strategy=IntervalStrategy.EPOCH)}, "evaluation"),
        ({"_logs": None}, "not a TRL GRPOTrainer"),
    ],
)
def test_where_trl_does_not_make_them_hold_they_are_not_read(attrs, reason) -> None:
    trainer = _trainer({"r": [1.0, 0.0, 1.0, 0.0]}, [1.0, -1.0, 1.0, -1.0], **attrs)
    assert reason in trl_advantages.unsupported(trainer)
    assert trl_advantages.advantage_invariants(trainer) == {
        "traj_advantage_residual": None, "traj_advantage_zeroed": None, "advantage_flipped_share": None
    }


def _alarms(callback: RFTFMCallback) -> list[dict]:
    return [e["payload"] for e in callback.controller.store.events(kind="alarm")]


def test_a_user_run_is_checked_and_a_sign_bug_alarms_at_its_onset_led_by_the_invariant(tmp_path):
    healthy = ur.user_trainer(tmp_path / "healthy", steps=10, seed=0)
    watch = RFTFMCallback.attach(healthy, remediate=False, report=False)
    healthy.train()
    start = [e["payload"] for e in watch.controller.store.events(kind="run")]
    assert {"event": "advantage invariants", "read": True, "reason": None} in start
    assert {"event": "on-policy check", "read": True} in start  # a plain GRPOTrainer: one pass per fresh batch
    schedule = next(p for p in start if p.get("event") == "learning-rate schedule")
    assert schedule["jumps_judged"] is (schedule["scheduler"] not in ("cosine_with_restarts", "reduce_lr_on_plateau"))
    assert not [a for a in _alarms(watch) if a["evidence"] and a["evidence"][0]["signal"].startswith("traj_adv")]
    assert "were checked at every logged step" in watch.narrative
    assert "checked for a jump no schedule makes" in watch.narrative
    assert "any clip ratio above 0 was flagged" in watch.narrative
    assert not [a for a in _alarms(watch) if a["evidence"] and a["evidence"][0]["signal"] == "clip_ratio_region"]

    buggy = ur.user_trainer(tmp_path / "buggy", steps=10, seed=0, callbacks=[ur.AdvantageSignBug(6)])
    watch = RFTFMCallback.attach(buggy, remediate=False, report=False)
    buggy.train()
    led = [a for a in _alarms(watch) if a["evidence"] and a["evidence"][0]["signal"] == "traj_advantage_residual"]
    assert led and min(a["step"] for a in led) == 6
    assert all(a["evidence"][0]["direction"] == "up" for a in led)  # broken upwards, though tier a tracks it not
    assert buggy.state.global_step == 10  # alert-only: the run goes on


@pytest.mark.parametrize("onset", [6, 1])
def test_with_the_loop_on_a_sign_bug_is_rolled_back_to_before_it_and_the_run_halted(tmp_path, onset):
    buggy = ur.user_trainer(tmp_path / "buggy", steps=10, seed=0, callbacks=[ur.AdvantageSignBug(onset)])
    loop = RFTFMCallback.attach(buggy, report=False)
    buggy.train()
    actions = [e for e in loop.controller.store.events(kind="action")]
    kinds = [(e["step"], e["payload"]["kind"]) for e in actions]
    # TRL's GRPO estimator arms the invariants from the first step; a broken one leaves only advantage bugs, and
    # each of them ends in a halt
    assert kinds == [(onset, "rollback"), (onset, "halt")]
    assert int(actions[0]["payload"]["detail"].split()[-1]) < onset  # to a checkpoint from before the bug
    assert loop.controller.mode == "halted" and buggy.state.global_step < 10
    diagnosis = loop.controller.store.events(kind="diagnosis")[0]["payload"]
    assert diagnosis["evidence"][0]["signal"] == "traj_advantage_residual"
    # every advantage has the other sign from its reward's deviation: a sign bug, not a broken normalisation
    assert diagnosis["evidence"][1]["signal"] == "advantage_flipped_share" and diagnosis["evidence"][1]["value"] == 1.0
    assert diagnosis["evidence"][1]["since_step"] == onset
    assert diagnosis["ranked"][0]["fault_type"] == "advantage_sign" and diagnosis["ranked"][0]["probability"] == 1.0


def test_no_evaluation_or_one_of_the_same_group_size_leaves_them_read() -> None:
    cases = [(IntervalStrategy.NO, 2), ("no", 2), ("steps", SIZE), (IntervalStrategy.STEPS, None)]
    for strategy, eval_size in cases:
        args = SimpleNamespace(eval_strategy=strategy)
        trainer = _trainer({"r": [1.0, 0.0]}, [1.0, -1.0], args=args, num_generations_eval=eval_size)
        assert trl_advantages.unsupported(trainer) is None, strategy
