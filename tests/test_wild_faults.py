"""The wild fault types' injectors act on the training process where the fault lives."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rftfm.engine.model import build_model
from rftfm.engine.tasks import Problem
from rftfm.engine.trainer import _mean_of_answered
from rftfm.faults.injectors import make_injector
from rftfm.faults.taxonomy import FAULT_TYPES, WILD_TYPES
from rftfm.knobs import get_knob, set_knob


def test_wild_types_are_marked_as_the_extension_with_both_strengths() -> None:
    assert set(WILD_TYPES) == {"reward_none", "length_clip_all", "numerical_blowup", "kl_dropped", "entropy_collapse"}
    for name, ftype in WILD_TYPES.items():
        assert ftype.extension and ftype.signals and set(ftype.params) == {"easy", "hard"}, name
    assert not any(t.extension for n, t in FAULT_TYPES.items() if n not in WILD_TYPES)


def test_reward_none_makes_the_verifier_return_none_for_a_fraction_and_retries_recover_it() -> None:
    injector = make_injector("reward_none", "easy", onset_step=3, seed=1)
    rewards, problems = np.ones(4000), [Problem("1+1=", 2, "p")] * 4000
    assert np.array_equal(injector.rewards(rewards, [""] * 4000, problems, step=2), rewards)  # before onset
    faulty = injector.rewards(rewards, [""] * 4000, problems, step=3)
    assert abs(np.isnan(faulty).mean() - FAULT_TYPES["reward_none"].params["easy"]["none_fraction"]) < 0.03
    # several verifier calls per completion (the reward_samples knob): only calls that all failed stay None
    samples = np.array([injector.rewards(rewards, [""] * 4000, problems, step=3) for _ in range(4)])
    assert np.isnan(_mean_of_answered(samples)).mean() < 0.2 and np.nanmax(_mean_of_answered(samples)) == 1.0
    assert np.array_equal(_mean_of_answered(np.array([[1.0, 0.0], [0.0, 0.0]])), [0.5, 0.0])


def test_kl_dropped_scales_beta_inside_the_loss_only() -> None:
    trainer = SimpleNamespace(beta=0.04)
    injector = make_injector("kl_dropped", "easy", onset_step=2)
    with injector.loss_scope(trainer, step=1):
        assert trainer.beta == 0.04
    with injector.loss_scope(trainer, step=2):
        assert trainer.beta == pytest.approx(0.04 * FAULT_TYPES["kl_dropped"].params["easy"]["beta_factor"])
    assert trainer.beta == 0.04  # what the trainer reports, and a knob reads, is the configured value


def _trainer_with_optimizer() -> SimpleNamespace:
    model = build_model("xs")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    model(input_ids=torch.tensor([[2, 3, 4]]), labels=torch.tensor([[2, 3, 4]])).loss.backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return SimpleNamespace(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                           args=SimpleNamespace(learning_rate=3e-4))


def test_numerical_blowup_switches_weights_and_adam_moments_to_half_precision() -> None:
    trainer = _trainer_with_optimizer()
    make_injector("numerical_blowup", "easy").before_rollout(trainer, step=1)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float16}
    moments = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    assert moments and {v.dtype for v in moments} == {torch.float16}
    assert get_knob(trainer, "learning_rate") == pytest.approx(3e-4 * 30)
    assert all(p is q for p, q in zip(trainer.model.parameters(), trainer.optimizer.param_groups[0]["params"]))


def test_length_clip_all_and_entropy_collapse_push_trainer_knobs() -> None:
    generation = SimpleNamespace(max_new_tokens=10)
    trainer = SimpleNamespace(max_completion_length=10, mask_truncated_completions=False, generation_config=generation,
                              generation_kwargs={}, entropy_coef=0.0, use_adaptive_entropy=False,
                              _entropy_bonus_enabled=False)
    make_injector("length_clip_all", "hard").before_rollout(trainer, step=1)
    assert trainer.max_completion_length == 2 and generation.max_new_tokens == 2 and trainer.mask_truncated_completions
    make_injector("entropy_collapse", "easy").before_rollout(trainer, step=1)
    assert trainer.entropy_coef < 0 and trainer._entropy_bonus_enabled  # TRL computes the term only when enabled
    set_knob(trainer, "entropy_coef", 0.0)
    assert not trainer._entropy_bonus_enabled and math.isclose(get_knob(trainer, "entropy_coef"), 0.0)
