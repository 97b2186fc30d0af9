"""The closed loop in a user's own TRL run, outside the benchmark (rftfm.testing.user_run: a plain
GRPOTrainer subclass with BatchReplayMixin, a tiny Llama, a counting task, an LR spike as the fault).

The configuration tests use a stand-in detector that alarms once after the spike, so they check the
plumbing (rollback, resume, knob restore) in each TRL setting a user has, whatever the detector; the
two tests at the end use the shipped detector and diagnoser, which meet this model and task for the
first time."""

from __future__ import annotations

import pytest
import torch

from rftfm.integrations.trl_callback import RFTFMCallback
from rftfm.integrations.trl_eval import RewardEval
from rftfm.testing import AfterSpike
from rftfm.testing import user_run as ur

torch.set_num_threads(1)
SPIKE = 8


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def train(tmp_path, name, loop=False, spike=False, **config):
    trainer = ur.user_trainer(tmp_path / name, seed=3, spike=ur.LRSpike(SPIKE) if spike else None, **config)
    callback = RFTFMCallback.attach(trainer, detector=AfterSpike(SPIKE), diagnoser=None, report=False) if loop else None
    trainer.train()
    return trainer, callback


CONFIGS = {
    "beta0-max_steps": {"steps": 16},
    "logging_steps=4": {"steps": 16, "logging_steps": 4},
    "gradient_accumulation=2": {"steps": 16, "gradient_accumulation_steps": 2},
    "warm-up 10 steps": {"steps": 16, "warmup_steps": 10},
    "beta=0.04": {"steps": 16, "beta": 0.04},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_spike_is_rolled_back_and_the_run_resumes_into_its_clean_twin(tmp_path, name):
    config = CONFIGS[name]
    clean, _ = train(tmp_path, "clean", **config)
    repaired, callback = train(tmp_path, "loop", loop=True, spike=True, **config)
    ctl = callback.controller
    actions = [e["payload"] for e in ctl.store.events(kind="action")]
    assert [a["kind"] for a in actions] == ["rollback", "set_knob"], actions
    assert int(actions[0]["detail"].split()[2].rstrip(";")) < SPIKE  # to a checkpoint before the spike
    assert actions[1]["knob"] == "learning_rate" and actions[1]["value"] == pytest.approx(3e-4)
    assert repaired.state.global_step == config["steps"] + ctl.length.replayed  # every planned update, and the replays
    a, b = weights(clean), weights(repaired)
    assert all(torch.equal(a[k], b[k]) for k in a), name  # resumed on the same batches, RNG and schedule


@pytest.mark.slow
def test_an_epoch_based_run_is_rolled_back_and_ends_with_its_data(tmp_path):
    config = {"steps": None, "epochs": 1.0, "prompts": 64}  # 16 steps of 4 prompts; no room to replay
    clean, _ = train(tmp_path, "clean", **config)
    repaired, callback = train(tmp_path, "loop", loop=True, spike=True, **config)
    kinds = [e["payload"]["kind"] for e in callback.controller.store.events(kind="action")]
    assert kinds == ["rollback", "set_knob"] and repaired.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert repaired.state.global_step == clean.state.global_step == 16  # the data ends the run, replays or not


def test_a_reward_eval_scores_greedy_completions_with_the_trainers_reward_and_leaves_the_rng(tmp_path):
    trainer = ur.user_trainer(tmp_path / "t", steps=4, eval_prompts=32)
    eval_fn = RewardEval.from_trainer(trainer, num_prompts=32, threshold=1.0)
    state = torch.get_rng_state()
    value = eval_fn(trainer.model)
    assert torch.equal(state, torch.get_rng_state())
    assert value == pytest.approx(ur.accuracy(trainer.model, n=32))  # exact count reward: pass rate = accuracy
    assert 0.0 <= RewardEval.from_trainer(trainer, num_prompts=8)(trainer.model) <= 1.0
    with pytest.raises(ValueError, match="no eval_dataset"):
        RewardEval.from_trainer(ur.user_trainer(tmp_path / "u", steps=4))


#: every record and a constant learning rate; TRL's GRPOConfig defaults: a record every 10 steps (averaged over them)
#: and the learning rate decaying linearly to 0
LOGGING = {
    "every step, constant LR": {},
    "TRL defaults: logging_steps=10, linear decay": ur.TRL_DEFAULT_LOGGING,
}


@pytest.mark.slow
@pytest.mark.parametrize("logging", list(LOGGING))
def test_a_healthy_user_run_completes_every_step_with_no_action(tmp_path, logging):
    trainer = ur.user_trainer(tmp_path / "healthy", steps=80, seed=0, **LOGGING[logging])
    callback = RFTFMCallback.attach(trainer, report=False)
    trainer.train()
    assert callback.setup_error is None and trainer.state.global_step == 80
    assert callback.controller.counts["interventions"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("logging", list(LOGGING))
def test_a_user_runs_lr_spike_is_rolled_back_and_ends_as_good_as_its_clean_twin(tmp_path, logging):
    clean = ur.user_trainer(tmp_path / "clean", steps=80, seed=0, **LOGGING[logging])
    clean.train()
    spiked = ur.user_trainer(tmp_path / "spiked", steps=80, seed=0, spike=ur.LRSpike(onset=30, factor=30.0),
                             **LOGGING[logging])
    callback = RFTFMCallback.attach(spiked, report=False)
    spiked.train()
    rollbacks = [e for e in callback.controller.store.events(kind="action") if e["payload"]["kind"] == "rollback"]
    assert rollbacks and spiked.state.global_step == 80 + callback.controller.length.replayed
    assert ur.accuracy(spiked.model) >= 0.9 * ur.accuracy(clean.model)


@pytest.mark.slow
def test_the_remediation_evaluation_runs_an_arm_through_the_plain_trainer_with_an_eval_callable():
    from rftfm.bench.eval_remediation import PlainRun, run_plain_arm

    run = PlainRun(run_id="plain-spike", seed=3, steps=16, spike_onset=SPIKE, eval_every=4, eval_prompts=32)
    result, callback = run_plain_arm(run, "loop+eval", components=(AfterSpike(SPIKE), None))
    assert result.rollbacks == 1 and result.steps == 16 + callback.controller.length.replayed
    assert callback.summary["evaluations"] >= 16 // 4 and 0.0 <= result.final_accuracy <= 1.0
    start = callback.controller.store.events(kind="run")[0]["payload"]
    assert start["eval_every"] == 4


def test_a_knob_push_sets_the_knob_once_at_its_onset_through_the_users_setter(tmp_path):
    push = ur.KnobPush(onset=3, knob="temperature", value=2.0)
    trainer = ur.user_trainer(tmp_path / "pushed", steps=4, spike=push)
    assert push.trainer is trainer and trainer.temperature == 1.0
    trainer.train()
    assert push.fired_at == 3
    assert trainer.temperature == trainer.generation_config.temperature == 2.0


@pytest.mark.slow
def test_an_entropy_penalty_pushed_at_trls_defaults_is_undone_with_an_eval_callable():
    """At TRL's defaults (a record every 10 steps) an 80-step run has too few records for the loss channels; with an
    eval callable the held-out accuracy's fall (read by the surprise channel from its 5th value on) catches an entropy
    coefficient pushed to -3 at step 40, and the loop sets it back (docs/integrations/trl.md, stop 59)."""
    from rftfm.bench.eval_remediation import PlainRun, load_components, repaired, run_plain_arm

    components = load_components(None, None)
    run = PlainRun(run_id="entropy-push", seed=400, steps=80, push=(40, "entropy_coef", -3.0), logging_steps=10,
                   lr_scheduler="linear")
    clean, _ = run_plain_arm(run, "clean", components)
    result, _ = run_plain_arm(run, "loop+eval", components)
    assert result.actions and "rollback" in result.actions[0]
    assert any("set_knob:entropy_coef=0.0" in a for a in result.actions)
    assert repaired(result.cleared, result.final_accuracy, clean.final_accuracy)  # cleared, at its clean twin's level
