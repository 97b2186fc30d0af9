"""The on-policy check: in a run known to train every optimiser step on fresh rollouts, a clip ratio above 0 alarms
and is diagnosed as rollouts from another policy; unknown runs are left to the other channels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from rftfm.fm.cube import runs_cube
from rftfm.fm.detect import Detector
from rftfm.fm.diagnose import Diagnoser
from rftfm.fm.on_policy import trl_on_policy, units
from rftfm.records import StepRecord


def _rows(clip_from: int = 9, steps: int = 14) -> list[dict]:
    rng = np.random.default_rng(3)
    return [
        {"run_id": "op", "step": s, "reward_mean": 0.4 + 0.01 * s + rng.normal(0, 0.02), "reward_std": 0.3,
         "kl": 0.01 * (1 + 0.05 * s), "entropy": 1.0 - 0.01 * s, "grad_norm": 1.0 + rng.normal(0, 0.1),
         "completion_length_mean": 20.0 + rng.normal(0, 0.5), "clip_ratio_region": 0.03 if s >= clip_from else 0.0}
        for s in range(1, steps + 1)
    ]


def test_the_rule_and_trls_own_test_of_on_policy_training():
    assert units(0.0) == 0.0 and units(None) == 0.0 and units(float("nan")) == 0.0 and units(1e-4) > 1
    args = SimpleNamespace(gradient_accumulation_steps=4, steps_per_generation=4)
    assert trl_on_policy(SimpleNamespace(args=args, num_iterations=1))
    assert not trl_on_policy(SimpleNamespace(args=args, num_iterations=2))  # two passes over one batch
    spanning = SimpleNamespace(gradient_accumulation_steps=2, steps_per_generation=4)  # a batch spans optimiser steps
    assert not trl_on_policy(SimpleNamespace(args=spanning, num_iterations=1))
    assert not trl_on_policy(object())
    vllm = SimpleNamespace(args=args, num_iterations=1, use_vllm=True, vllm_importance_sampling_correction=True)
    assert not trl_on_policy(vllm)  # old log-probabilities from a separate pass


@pytest.mark.parametrize("known", [True, False])
def test_a_clip_ratio_above_0_alarms_only_where_the_run_is_known_on_policy(known):
    detector = Detector.load_default()
    detector.know_on_policy(known)
    detector.reset("op")
    rows, live, alarms = _rows(), [], []
    for r in rows:
        alarm = detector.observe(StepRecord(**r))
        live.append(detector.last_score)
        alarms += [alarm] if alarm is not None else []
    cube, steps = runs_cube(pl.DataFrame(rows), ["op"])
    np.testing.assert_allclose(live, detector.score_cube(cube, steps, "a")[0][0], rtol=1e-9)
    led = [a for a in alarms if a.evidence and a.evidence[0].signal == "clip_ratio_region"]
    if known:
        assert led and led[0].step == 9 and led[0].evidence[0].value == pytest.approx(0.03)
        assert len(led[0].evidence) == 1  # raised by the check alone: the clip ratio is the whole evidence
    else:
        assert not led
    detector.know_on_policy(False)


def test_the_diagnoser_names_rollouts_from_another_policy_where_the_run_is_known_on_policy():
    history = pl.DataFrame(_rows())
    diagnoser = Diagnoser.load_default()
    diagnoser.know_on_policy(True)
    d = diagnoser.diagnose(history, "op", 11)
    assert not d.unknown and d.top.fault_type == "rollout_mismatch"
    assert d.evidence[0].signal == "clip_ratio_region" and d.evidence[0].since_step == 9
