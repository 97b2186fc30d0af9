"""What the recording trainer writes: TRL's window averages at logging_steps > 1, TRL's reward semantics."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rftfm.bench.runner import train_run
from rftfm.records import RunInfo, StepRecord, TrajectoryRecord


def _train(**fields) -> list[tuple[StepRecord, list[TrajectoryRecord]]]:
    base = dict(run_id="t", group="normal", task_group="arith_a", model_size="xs", seed=4, num_steps=4,
                prompts_per_step=2, num_generations=4, control_or_fault="normal")
    out: list[tuple[StepRecord, list[TrajectoryRecord]]] = []
    train_run(RunInfo(**{**base, **fields}), sinks=[lambda s, t: out.append((s, t))])
    return out


def test_logging_steps_gives_one_record_per_window_with_trls_averages_and_every_trajectory() -> None:
    records = _train(logging_steps=2)
    assert [s.step for s, _ in records] == [2, 4]
    for record, trajectories in records:
        window = sorted({t.rollout_step for t in trajectories})
        assert window == [record.step - 1, record.step] and len(trajectories) == 2 * 8
        # TRL logs the mean over the window of each step's mean reward; the trajectories carry those rewards
        per_step = [np.mean([t.reward for t in trajectories if t.rollout_step == s]) for s in window]
        assert record.reward_mean == pytest.approx(np.mean(per_step), abs=1e-6)
        zero = [np.mean([max(abs(t.advantage) for t in trajectories if t.rollout_step == s and t.group_id == g) < 1e-6
                         for g in range(2)]) for s in window]
        assert record.frac_zero_std_groups == pytest.approx(np.mean(zero))
        assert record.eval_accuracy is not None


def test_a_verifier_returning_none_gives_missing_rewards_and_zero_advantages() -> None:
    records = _train(control_or_fault="fault", group="rf_easy_fault", fault_family="rf", fault_type="reward_none",
                     fault_strength="easy", onset_step=2, num_steps=3)
    before = [t for _, ts in records for t in ts if t.rollout_step == 1]
    after = [t for _, ts in records for t in ts if t.rollout_step > 1]
    assert all(t.reward is not None for t in before)
    missing = [t for t in after if t.reward is None]
    assert missing and all(t.advantage == 0.0 for t in missing)  # TRL: unscorable completions carry no signal
    assert all(s.fault_injection.active == (s.step >= 2) for s, _ in records)


@pytest.mark.slow
def test_a_task_with_a_format_reward_logs_each_function_and_records_their_weighted_sum() -> None:
    records = _train(task_group="fmt_sub", num_steps=2)
    for step, trajectories in records:
        assert {"rewards/verifier_reward/mean", "rewards/format_reward/mean"} <= set(step.extra)
        formatted = [t for t in trajectories if re.fullmatch(r"#\d+#", t.completion.strip())]
        assert formatted
        assert all(t.reward >= 0.5 for t in formatted)  # the format reward weighs 0.5 beside correctness
        assert step.reward_mean == pytest.approx(np.mean([t.reward for t in trajectories]), abs=1e-6)


def test_a_tool_task_logs_trls_tool_metrics_from_the_calls_its_trajectories_record() -> None:
    """TRL's tools/call_frequency (calls per completion) and tools/failure_frequency (failed calls per call), from
    the same calls the trajectories record; a task without tools logs neither (as TRL without ``tools``)."""
    records = _train(task_group="tool", num_steps=3, control_or_fault="fault", group="te_easy_fault",
                     fault_family="te", fault_type="tool_failure", fault_strength="easy", onset_step=3)
    for record, trajectories in records:
        calls = sum(t.tool_call_count for t in trajectories)
        errors = sum(t.tool_error_count for t in trajectories)
        assert record.tool_call_frequency == pytest.approx(calls / len(trajectories))
        assert record.tool_failure_frequency == pytest.approx(errors / calls if calls else 0.0)
    assert all(r.tool_call_frequency is None and r.tool_failure_frequency is None for r, _ in _train(num_steps=1))
