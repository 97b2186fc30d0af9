"""Schema validation, the taxonomy registry, and live features == offline features."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from rftfm.bench.runner import train_run
from rftfm.faults.injectors import INJECTORS, make_injector
from rftfm.faults.taxonomy import FAMILIES, FAULT_TYPES, PUBLISHED_TYPES, STRENGTHS, WILD_TYPES
from rftfm.fm.features import FEATURES, features_frame, step_features
from rftfm.io.faultbench import flatten_step, flatten_trajectory
from rftfm.records import LABEL_FIELDS, RunInfo, StepRecord, TrajectoryRecord, finite_or_none


def test_records_validate_and_reject_bad_input() -> None:
    rec = StepRecord(run_id="r", step=3, reward_mean=0.5, extra={"x": 1.0})
    assert rec.schema_version == 1 and rec.kl is None
    with pytest.raises(ValidationError):
        StepRecord(run_id="r", step=-1)
    with pytest.raises(ValidationError):
        StepRecord(run_id="r", step=1, not_a_field=1.0)
    with pytest.raises(ValidationError):
        StepRecord(run_id="r", step=1, reward_mean="high")
    traj = TrajectoryRecord.model_validate(
        {"run_id": "r", "rollout_step": 1, "prompt_id": "p", "group_id": 0, "return": 1.0}
    )
    assert traj.ret == 1.0
    assert finite_or_none(float("nan")) is None and finite_or_none("inf") is None and finite_or_none("2.5") == 2.5
    assert finite_or_none(True) is None


def test_taxonomy_is_complete_and_every_type_has_an_injector() -> None:
    assert len(FAMILIES) == 5 and len(PUBLISHED_TYPES) == 16 and len(WILD_TYPES) >= 5
    assert set(INJECTORS) == set(FAULT_TYPES)
    for name, ftype in FAULT_TYPES.items():
        assert ftype.family in FAMILIES
        assert set(ftype.params) == set(STRENGTHS), name
        injector = make_injector(name, "hard", onset_step=5)
        assert not injector.is_active(4) and injector.is_active(5)
    assert not make_injector(None, None).is_active(1)
    assert not LABEL_FIELDS & set(FEATURES)


def test_trajectory_aggregates_read_missing_fields_and_plain_objects_alike() -> None:
    """The fast path (the records' ``__dict__``, one ``fromiter``) and its fallbacks (a missing field, an object that
    is not a pydantic record) give the same aggregates."""
    from types import SimpleNamespace

    from rftfm.fm.features import trajectory_aggregates

    def record(i: int, reward: float | None) -> TrajectoryRecord:
        return TrajectoryRecord(run_id="r", rollout_step=1, prompt_id=f"p{i // 4}", group_id=i // 4, reward=reward,
                                response_length=3 + i, advantage=(reward or 0.0) - 0.5, repetition_ratio=0.1,
                                unique_token_ratio=0.9, flags={"truncated": i % 3 == 0})
    full = [record(i, float(i % 2)) for i in range(8)]
    holed = [record(i, None if i == 5 else float(i % 2)) for i in range(8)]
    plain = [SimpleNamespace(**{k: v for k, v in t.__dict__.items() if k != "flags"},
                             flags=SimpleNamespace(**t.flags.__dict__)) for t in holed]
    a, b, c = trajectory_aggregates(full), trajectory_aggregates(holed), trajectory_aggregates(plain)
    assert b == c
    assert a["traj_truncated_rate"] == b["traj_truncated_rate"] == pytest.approx(3 / 8)
    assert b["traj_reward_mean"] == pytest.approx(3 / 7)  # the missing reward is left out, not read as 0
    assert a["traj_reward_mean"] == pytest.approx(0.5) and a["traj_length_mean"] == pytest.approx(6.5)
    unflagged = [SimpleNamespace(**{**t.__dict__, "flags": SimpleNamespace(**{**t.flags.__dict__, "truncated": None})})
                 if i == 2 else t for i, t in enumerate(plain)]  # one record without its truncation flag
    d = trajectory_aggregates(unflagged)
    assert math.isnan(d["traj_truncated_rate"])  # a missing flag is missing, not read as False
    assert d["traj_empty_rate"] == b["traj_empty_rate"] == 0.0 and d["traj_reward_mean"] == b["traj_reward_mean"]


def test_a_live_row_reads_non_finite_and_non_numbers_as_missing() -> None:
    from rftfm.fm.cube import CUBE_SIGNALS, record_row

    row = record_row({FEATURES[0]: 1.5, FEATURES[1]: float("inf"), FEATURES[2]: None})
    assert row.shape == (1, len(CUBE_SIGNALS)) and row[0, 0] == 1.5 and np.isnan(row[0, 1 : len(FEATURES)]).all()
    odd = record_row({FEATURES[0]: "high", FEATURES[1]: 2})  # a string: the slow path, which drops it
    assert np.isnan(odd[0, 0]) and odd[0, 1] == 2.0


def test_live_features_equal_offline_features() -> None:
    info = RunInfo(run_id="f", group="te_easy_fault", task_group="tool", model_size="xs", seed=11, num_steps=4,
                   prompts_per_step=2, num_generations=4, control_or_fault="fault", fault_family="te",
                   fault_type="tool_failure", fault_strength="easy", onset_step=2)
    live, steps, trajs = [], [], []

    def sink(step, trajectories):
        live.append(step_features(step, trajectories))
        steps.append(flatten_step(step))
        trajs.extend(flatten_trajectory(t) for t in trajectories)

    train_run(info, sinks=[sink])
    offline = features_frame(pl.DataFrame(steps), pl.DataFrame(trajs)).to_dicts()
    assert len(offline) == len(live) == 4
    assert [r["fault_active"] for r in offline] == [False, True, True, True]
    for on, off in zip(live, offline):
        for name in FEATURES:
            a, b = on[name], off[name]
            if a is None or b is None:
                assert a is None and b is None, name
            else:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (name, a, b)
