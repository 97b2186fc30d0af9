"""The advantage-consistency signals: 0 for every group-relative estimator, positive for advantage bugs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rftfm.fm.detect import Detector
from rftfm.fm.features import _advantage_consistency_frame, advantage_consistency
from rftfm.fm.invariants import INVARIANT_LIMITS
from rftfm.records import StepRecord, TrajectoryRecord

GROUPS, SIZE = 6, 8


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(GROUPS), SIZE).astype(float)
    reward = rng.integers(0, 2, GROUPS * SIZE).astype(float) + 0.3 * rng.random(GROUPS * SIZE)
    return group, reward


def _grpo(group: np.ndarray, reward: np.ndarray, scale: str) -> np.ndarray:
    """TRL's advantages: reward minus its group mean, over the group's / the batch's sd or not at all."""
    r = reward.reshape(GROUPS, SIZE)
    d = r - r.mean(axis=1, keepdims=True)
    if scale == "group":
        d = d / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)
    elif scale == "batch":
        d = d / (reward.std(ddof=1) + 1e-4)
    return d.ravel()


def _rloo(reward: np.ndarray) -> np.ndarray:
    r = reward.reshape(GROUPS, SIZE)
    return (r - (r.sum(axis=1, keepdims=True) - r) / (SIZE - 1)).ravel()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_relative_estimators_are_consistent(scale: str) -> None:
    group, reward = _batch()
    residual, zeroed = advantage_consistency(group, reward, _grpo(group, reward, scale))
    assert residual == pytest.approx(0.0, abs=1e-9) and zeroed == 0.0
    residual, zeroed = advantage_consistency(group, reward, _rloo(reward))
    assert residual == pytest.approx(0.0, abs=1e-9) and zeroed == 0.0


def test_advantage_bugs_are_not() -> None:
    group, reward = _batch()
    adv = _grpo(group, reward, "group")
    rng = np.random.default_rng(1)
    flipped = np.where(rng.random(adv.size) < 0.45, -adv, adv)
    assert advantage_consistency(group, reward, flipped)[0] > 0.3
    assert advantage_consistency(group, reward, -adv)[0] == pytest.approx(1.0)
    lengths = rng.integers(2, 40, adv.size).astype(float)
    biased = adv * 3.0 * (lengths / lengths.mean())
    assert advantage_consistency(group, reward, biased)[0] > 0.05
    dropped = np.where(group < 3, 0.0, adv)
    residual, zeroed = advantage_consistency(group, reward, dropped)
    assert zeroed == pytest.approx(0.5) and residual == pytest.approx(0.0, abs=1e-9)


def test_groups_without_spread_or_with_an_unscored_member_are_left_out() -> None:
    group, reward = _batch()
    reward.reshape(GROUPS, SIZE)[0] = 1.0  # a solved group: no spread, advantages 0 by right
    adv = _grpo(group, reward, "none")
    reward[SIZE] = np.nan  # group 1 has a completion no reward function scored
    adv[SIZE + 1 : 2 * SIZE] *= -1  # whatever its advantages are, they are not judged
    residual, zeroed = advantage_consistency(group, reward, adv)
    assert residual == pytest.approx(0.0, abs=1e-9) and zeroed == 0.0
    assert advantage_consistency(group[:SIZE], reward[:SIZE], adv[:SIZE]) == (None, None)


def test_group_ids_far_apart_or_not_whole_numbers_give_the_same_numbers() -> None:
    """Small whole-number ids are indexed by offset, any other ids through ``np.unique``: the same result."""
    group, reward = _batch()
    rng = np.random.default_rng(2)
    adv = _grpo(group, reward, "group")
    adv = np.where(rng.random(adv.size) < 0.3, -adv, adv)  # a residual above 0 to compare
    expected = advantage_consistency(group, reward, adv)
    assert expected[0] > 0.05
    for ids in (group * 1000.0 + 7, group * 0.5, group[::-1].copy(), 3.0 * group):
        order = np.argsort(ids, kind="stable") if ids[0] > ids[-1] else np.arange(ids.size)
        got = advantage_consistency(ids[order], reward[order], adv[order])
        assert got[0] == pytest.approx(expected[0], abs=1e-12) and got[1] == expected[1]


def test_the_offline_frame_gives_the_streaming_numbers() -> None:
    rows, expected = [], []
    for step in (1, 2, 3):
        group, reward = _batch(step)
        adv = _grpo(group, reward, "group")
        if step == 2:
            adv = np.where(np.random.default_rng(step).random(adv.size) < 0.5, -adv, adv)
        if step == 3:
            adv = np.where(group < 2, 0.0, adv)
        expected.append(advantage_consistency(group, reward, adv))
        rows += [
            {"run_id": "r", "rollout_step": step, "group_id": int(g), "reward": float(r), "advantage": float(a)}
            for g, r, a in zip(group, reward, adv)
        ]
    frame = _advantage_consistency_frame(pl.DataFrame(rows)).sort("step")
    for (residual, zeroed), row in zip(expected, frame.iter_rows(named=True)):
        assert row["traj_advantage_residual"] == pytest.approx(residual, abs=1e-9)
        assert row["traj_advantage_zeroed"] == pytest.approx(zeroed)


def test_a_record_pooling_several_rollout_steps_keeps_their_groups_apart() -> None:
    from rftfm.fm.features import trajectory_aggregates

    pooled, shuffled = [], []
    for step in (1, 2):  # logging_steps = 2: one record holds two generation batches with the same group ids
        group, reward = _batch(step)
        adv = _grpo(group, reward, "batch")
        pooled += [
            TrajectoryRecord(run_id="r", rollout_step=step, prompt_id=f"p{step}-{int(g)}", group_id=int(g),
                             reward=float(r), response_length=5, advantage=float(a))
            for g, r, a in zip(group, reward, adv)
        ]
    aggregates = trajectory_aggregates(pooled)
    assert aggregates["traj_advantage_residual"] == pytest.approx(0.0, abs=1e-9)
    for t in pooled:  # the same trajectories stamped with one step would merge the two batches' groups
        shuffled.append(t.model_copy(update={"rollout_step": 2}))
    assert trajectory_aggregates(shuffled)["traj_advantage_residual"] > INVARIANT_LIMITS["traj_advantage_residual"]


def _step_with_trajectories(step: int, flip: bool, seed: int) -> tuple[StepRecord, list[TrajectoryRecord]]:
    group, reward = _batch(seed)
    adv = _grpo(group, reward, "group") * (-1.0 if flip else 1.0)
    rng = np.random.default_rng(seed)
    trajectories = [
        TrajectoryRecord(
            run_id="user", rollout_step=step, prompt_id=f"p{int(g)}", group_id=int(g), reward=float(r),
            response_length=int(rng.integers(20, 40)), advantage=float(a),
        )
        for g, r, a in zip(group, reward, adv)
    ]
    record = StepRecord(
        run_id="user", step=step, reward_mean=float(reward.mean()), reward_std=float(reward.std()),
        kl=0.01 * step, entropy=1.0, grad_norm=1.0 + 0.1 * rng.random(), completion_length_mean=30.0,
    )
    return record, trajectories


def test_a_broken_invariant_alarms_on_its_own_and_leads_the_evidence() -> None:
    detector = Detector.load_default()
    detector.reset("user")
    healthy = [detector.observe(*_step_with_trajectories(step, flip=False, seed=step)) for step in range(1, 21)]
    invariants = set(INVARIANT_LIMITS)
    assert not any(invariants & {e.signal for e in alarm.evidence} for alarm in healthy if alarm is not None)
    alarm = detector.observe(*_step_with_trajectories(21, flip=True, seed=21))
    assert alarm is not None and alarm.score >= 0.5 / INVARIANT_LIMITS["traj_advantage_residual"]
    assert alarm.evidence[0].signal == "traj_advantage_residual" and alarm.evidence[0].value == pytest.approx(1.0)


def _batch_baseline(group: np.ndarray, reward: np.ndarray) -> np.ndarray:
    """REINFORCE++-style advantages: reward minus the batch mean (not group-relative)."""
    return reward - reward.mean()


def test_an_estimator_that_never_holds_the_invariant_never_arms_it_and_offline_equals_streaming() -> None:
    from rftfm.fm.cube import runs_cube
    from rftfm.fm.features import step_features

    detector = Detector.load_default()
    detector.reset("ppo")
    rows, scores = [], []
    for step in range(1, 16):
        record, trajectories = _step_with_trajectories(step, flip=False, seed=step)
        group, reward = _batch(step)
        for t, a in zip(trajectories, _batch_baseline(group, reward)):
            t.advantage = float(a)
            t.run_id = record.run_id = "ppo"
        alarm = detector.observe(record, trajectories)
        assert alarm is None or not set(INVARIANT_LIMITS) & {e.signal for e in alarm.evidence}
        scores.append(detector.last_score)
        rows.append({"run_id": "ppo", "step": step, **step_features(record, trajectories)})
    assert rows[-1]["traj_advantage_residual"] > INVARIANT_LIMITS["traj_advantage_residual"]  # broken throughout
    cube, steps = runs_cube(pl.DataFrame(rows), ["ppo"])
    offline, _ = detector.score_cube(cube, steps, "b")
    np.testing.assert_allclose(scores, offline[0], rtol=1e-9)


def test_a_broken_armed_invariant_diagnoses_credit_assignment_and_an_unarmed_one_nothing() -> None:
    from rftfm.fm import invariants
    from rftfm.fm.cube import runs_cube
    from rftfm.fm.diagnose import Diagnoser
    from rftfm.fm.features import step_features

    rows, never = [], []
    for step in range(1, 14):
        record, trajectories = _step_with_trajectories(step, flip=step >= 12, seed=step)
        rows.append({"run_id": "user", "step": step, **step_features(record, trajectories)})
        group, reward = _batch(step)
        for t, a in zip(trajectories, _batch_baseline(group, reward)):
            t.advantage = float(a)
        never.append({"run_id": "user", "step": step, **step_features(record, trajectories)})
    history = pl.DataFrame(rows)
    assert invariants.broken(*(a[0] for a in runs_cube(history, ["user"]))) == ["traj_advantage_residual"]
    assert invariants.broken(*(a[0] for a in runs_cube(pl.DataFrame(never), ["user"]))) == []
    diagnosis = Diagnoser.load_default().diagnose(history, "user", 13)
    assert not diagnosis.unknown and diagnosis.top.family == "ca"
    assert diagnosis.top.fault_type in ("advantage_sign", "advantage_normalization")
    assert sum(h.probability for h in diagnosis.ranked if h.family != "ca") == 0.0


def test_a_known_estimator_arms_the_invariants_from_the_first_record() -> None:
    from rftfm.fm import invariants
    from rftfm.fm.cube import runs_cube
    from rftfm.fm.diagnose import Diagnoser
    from rftfm.fm.features import step_features

    detector, diagnoser = Detector.load_default(), Diagnoser.load_default()
    rows = []
    for known in (False, True):  # a bug from the first step: unarmed, it is left to other evidence; known, it alarms
        detector.know_invariants(known)
        detector.reset("user")
        alarm = detector.observe(*_step_with_trajectories(1, flip=True, seed=1))
        led = alarm is not None and alarm.evidence[0].signal == "traj_advantage_residual"
        assert led == known
    assert detector.invariants_known  # kept for the next run's reset
    detector.reset("next")
    assert detector.observe(*_step_with_trajectories(1, flip=True, seed=2)) is not None
    for step in (1, 2):
        rows.append({"run_id": "user", "step": step, **step_features(*_step_with_trajectories(step, True, step))})
    cube, steps = runs_cube(pl.DataFrame(rows), ["user"])
    assert invariants.broken(cube[0], steps[0]) == [] and invariants.broken(cube[0], steps[0], known=True)
    diagnoser.know_invariants(True)
    diagnosis = diagnoser.diagnose(pl.DataFrame(rows), "user", 2)
    assert diagnosis.top is not None and diagnosis.top.family == "ca"
    lead = diagnosis.evidence[0]  # the broken invariant, though the tracker may not follow it
    assert (lead.signal, lead.direction, lead.since_step) == ("traj_advantage_residual", "up", 1)
    assert lead.value == pytest.approx(1.0) and "advantage" in diagnosis.summary


def test_advantages_rounded_to_bf16_stay_far_below_the_limit() -> None:
    """The limit's margin over float rounding (docs/detection.md, rftfm.fm.invariants): bf16 advantages."""
    import torch

    worst = 0.0
    for seed in range(20):
        group, reward = _batch(seed)
        adv = torch.tensor(_grpo(group, reward, "group")).to(torch.bfloat16).double().numpy()
        worst = max(worst, advantage_consistency(group, reward, adv)[0])
    assert worst < INVARIANT_LIMITS["traj_advantage_residual"] / 10, worst
