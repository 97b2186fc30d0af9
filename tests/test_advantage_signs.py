"""Advantage signs against their rewards' deviations: a sign bug flips some, a broken normalisation (a positive
rescaling) flips none -- what tells the two advantage bugs apart once an invariant broke."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import advantage_signs
from rftfm.fm.advantage_signs import SIGNAL
from rftfm.fm.diagnose import Diagnoser
from rftfm.fm.features import advantage_consistency, advantage_flips, features_frame, step_features
from rftfm.records import StepRecord, TrajectoryRecord

GROUPS, SIZE = 6, 8


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids, rewards, TRL's group-scaled advantages) of one step."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(GROUPS), SIZE).astype(float)
    reward = rng.integers(0, 2, GROUPS * SIZE).astype(float) + 0.3 * rng.random(GROUPS * SIZE)
    r = reward.reshape(GROUPS, SIZE)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).ravel()
    return group, reward, adv


def _lengths(seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(5, 60, GROUPS * SIZE).astype(float)


def test_a_sign_bug_flips_some_a_rescaling_or_a_healthy_estimator_none() -> None:
    group, reward, adv = _batch(0)
    assert advantage_flips(group, reward, adv) == 0.0
    r = reward.reshape(GROUPS, SIZE)
    rloo = (r - (r.sum(1, keepdims=True) - r) / (SIZE - 1)).ravel()
    assert advantage_flips(group, reward, rloo) == 0.0
    lengths = _lengths(0)
    biased = adv * 12.0 * (lengths / lengths.mean()) ** 2  # the benchmark's broken normalisation
    assert advantage_consistency(group, reward, biased)[0] > 0.05 and advantage_flips(group, reward, biased) == 0.0
    flip = np.random.default_rng(1).random(adv.size) < 0.45
    share = advantage_flips(group, reward, np.where(flip, -adv, adv))
    assert share == pytest.approx(flip.mean(), abs=0.05)
    assert advantage_flips(group, reward, -adv) == 1.0
    zeroed = np.where(group < 3, 0.0, -adv)  # zeroed groups are not judged: the rest are all flipped
    assert advantage_flips(group, reward, zeroed) == 1.0
    assert advantage_flips(group, np.ones_like(reward), adv) is None  # no reward spreads: nothing to judge
    assert advantage_flips(np.full(adv.size, np.nan), reward, adv) is None


def _step(step: int, advantages: np.ndarray | None = None, group_ids: np.ndarray | None = None,
          run_id: str = "user") -> tuple[StepRecord, list[TrajectoryRecord]]:
    group, reward, adv = _batch(step)
    adv = adv if advantages is None else advantages
    ids = group if group_ids is None else group_ids
    trajectories = [
        TrajectoryRecord(run_id=run_id, rollout_step=step, prompt_id=f"p{int(g)}", group_id=int(i), reward=float(r),
                         advantage=float(a), response_length=int(n))
        for g, i, r, a, n in zip(group, ids, reward, adv, _lengths(step))
    ]
    record = StepRecord(run_id=run_id, step=step, reward_mean=float(reward.mean()), reward_std=float(reward.std()),
                        kl=0.01 * step, entropy=1.0, grad_norm=1.0 + 0.01 * step, completion_length_mean=30.0)
    return record, trajectories


@pytest.mark.parametrize("ids", ["small", "far"])
def test_live_compiled_numpy_and_offline_paths_give_the_same_share(ids: str) -> None:
    rows, live = [], []
    for step in range(1, 6):
        group, reward, adv = _batch(step)
        flipped = np.where(np.random.default_rng(step).random(adv.size) < 0.2 * step, -adv, adv)
        group_ids = group if ids == "small" else 1000 * group + 7
        record, trajectories = _step(step, flipped, group_ids)
        live.append(step_features(record, trajectories)[SIGNAL])
        assert live[-1] == pytest.approx(advantage_flips(group, reward, flipped), abs=1e-12)
        rows += [t.model_dump() for t in trajectories]
    steps = pl.DataFrame({"run_id": ["user"] * 5, "step": list(range(1, 6))})
    offline = features_frame(steps, pl.DataFrame(rows))[SIGNAL].to_list()
    np.testing.assert_allclose(offline, live, atol=1e-12)
    assert live[0] < live[-1]


def test_a_trainers_share_is_read_from_the_records_extra_live_and_offline() -> None:
    assert step_features(StepRecord(run_id="r", step=3, extra={SIGNAL: 0.5}), [])[SIGNAL] == 0.5
    assert step_features(StepRecord(run_id="r", step=3), [])[SIGNAL] is None
    steps = pl.DataFrame({"run_id": ["r"] * 2, "step": [1, 2], f"extra.{SIGNAL}": [0.0, 0.25]})
    assert features_frame(steps, None)[SIGNAL].to_list() == [0.0, 0.25]
    assert features_frame(steps.drop(f"extra.{SIGNAL}"), None)[SIGNAL].null_count() == 2


def _history(shares: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame({"run_id": ["r"] * len(shares), "step": list(range(1, len(shares) + 1)), SIGNAL: shares},
                        schema_overrides={SIGNAL: pl.Float64})


def test_the_reading_is_armed_as_the_invariants_are() -> None:
    flipped, evidence = advantage_signs.reading(_history([0.0, 0.0, 0.0, 0.0, 0.4, 0.5]), "r", 6)
    assert flipped is True and (evidence.value, evidence.since_step) == (0.5, 5)
    assert "85" in advantage_signs.describe(evidence.model_copy(update={"value": 0.85}))
    assert advantage_signs.reading(_history([0.0, 0.0, 0.0, 0.0, 0.4, 0.5]), "r", 4) == (False, None)
    assert advantage_signs.reading(_history([0.4, 0.5, 0.4]), "r", 3) == (None, None)  # never held: not armed
    assert advantage_signs.reading(_history([0.4, 0.5, 0.4]), "r", 3, known=True)[0] is True
    assert advantage_signs.reading(_history([0.0, 0.0, 0.0, 0.0, None]), "r", 5) == (False, None)
    assert advantage_signs.reading(_history([0.0, 0.0, 0.0, None, None, None]), "r", 6) == (None, None)
    assert advantage_signs.reading(_history([0.0] * 3).drop(SIGNAL), "r", 3) == (None, None)


def test_only_a_sign_bug_flips_signs_in_the_registry() -> None:
    assert [t for t, f in FAULT_TYPES.items() if f.flips_advantage_signs] == ["advantage_sign"]


@pytest.mark.parametrize("bug", ["sign", "normalisation"])
def test_the_shipped_diagnoser_tells_a_sign_bug_from_a_broken_normalisation(bug: str) -> None:
    rows = []
    for step in range(1, 15):
        group, reward, adv = _batch(step)
        if step >= 11 and bug == "sign":
            adv = np.where(np.random.default_rng(step).random(adv.size) < 0.45, -adv, adv)
        elif step >= 11:
            adv = adv * 3.0 * _lengths(step) / _lengths(step).mean()
        rows.append({"run_id": "user", "step": step, **step_features(*_step(step, adv))})
    history = pl.DataFrame(rows)
    diagnosis = Diagnoser.load_default().diagnose(history, "user", 14)
    probability = {h.fault_type: h.probability for h in diagnosis.ranked}
    assert not diagnosis.unknown and diagnosis.top.family == "ca"
    if bug == "sign":
        assert probability["advantage_sign"] == pytest.approx(1.0)
        assert [e.signal for e in diagnosis.evidence[:2]] == ["traj_advantage_residual", SIGNAL]
        assert diagnosis.evidence[1].since_step == 11
    else:
        assert probability["advantage_sign"] == 0.0 and diagnosis.top.fault_type == "advantage_normalization"
        assert SIGNAL not in {e.signal for e in diagnosis.evidence}


def test_a_broken_invariant_with_signs_held_is_a_rescaling_whatever_the_model_said() -> None:
    """The model all but sure of a sign bug, the invariant broken and every sign held: the broken normalisation is
    what is left, with certainty, not an abstention; signs flipped leave the sign bug; not read, the model's choice
    between the two stands."""
    from rftfm.fm.diagnose import Seen

    diagnoser = Diagnoser.load_default()
    classes = diagnoser.classes
    prob = np.full((3, len(classes)), 1e-6)
    prob[:, classes.index("advantage_sign")] = 0.99
    prob /= prob.sum(1, keepdims=True)
    base = Seen(["traj_advantage_residual"], 0.0, None, [], [], False, False, False)
    seen = [base, Seen(**{**base.__dict__, "flipped": False}), Seen(**{**base.__dict__, "flipped": True})]
    out, unknown = diagnoser.apply_seen(prob, np.zeros(3, dtype=bool), seen)
    assert not unknown.any()
    assert out[1, classes.index("advantage_normalization")] == pytest.approx(1.0)
    assert out[2, classes.index("advantage_sign")] == pytest.approx(1.0)
    sign, norm = out[0, classes.index("advantage_sign")], out[0, classes.index("advantage_normalization")]
    assert sign > 0.99 and sign + norm == pytest.approx(1.0)
