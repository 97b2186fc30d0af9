"""The trainer knobs added for remediation: tool retries, repeated verifier calls, the zero-variance filter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rftfm.engine.knobs import KNOBS, get_knob, set_knob
from rftfm.engine.tasks import ToolResult, with_retries
from rftfm.engine.trainer import RecordingGRPOTrainer


def _flaky(failures: int):
    calls = {"n": 0}

    def tool(a: int, op: str, b: int) -> ToolResult:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise TimeoutError("sandbox timed out")
        return ToolResult(a * b)

    return tool, calls


def test_with_retries_retries_a_raising_tool_and_gives_up_after_the_budget() -> None:
    tool, calls = _flaky(2)
    assert with_retries(tool, 2)(3, "*", 4).value == 12 and calls["n"] == 3
    tool, calls = _flaky(5)
    with pytest.raises(TimeoutError):
        with_retries(tool, 2)(3, "*", 4)
    assert calls["n"] == 3
    tool, _ = _flaky(0)
    assert with_retries(tool, 0) is tool


def test_new_knobs_are_validated_and_readable() -> None:
    trainer = SimpleNamespace(tool_retries=0, reward_samples=1, filter_zero_variance_groups=False)
    for name in ("tool_retries", "reward_samples", "filter_zero_variance_groups"):
        assert name in KNOBS
    set_knob(trainer, "tool_retries", 3.0)
    set_knob(trainer, "reward_samples", 4)
    set_knob(trainer, "filter_zero_variance_groups", 1)
    assert (get_knob(trainer, "tool_retries"), get_knob(trainer, "reward_samples")) == (3, 4)
    assert get_knob(trainer, "filter_zero_variance_groups") is True
    with pytest.raises(ValueError):
        set_knob(trainer, "reward_samples", 0)
    with pytest.raises(ValueError):
        set_knob(trainer, "tool_retries", -1)


def test_zero_variance_filter_masks_only_all_zero_groups_and_renormalises() -> None:
    out = {"advantages": torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0]),
           "completion_mask": torch.ones(6, 3, dtype=torch.long), "num_items_in_batch": torch.tensor(18)}
    RecordingGRPOTrainer._drop_zero_advantage_groups(SimpleNamespace(num_generations=2), out)
    assert out["tool_mask"][:, 0].tolist() == [0, 0, 1, 1, 0, 0]
    assert int(out["num_items_in_batch"]) == 6
    # every group without signal: nothing to keep, the batch is left as it was
    out = {"advantages": torch.zeros(4), "completion_mask": torch.ones(4, 2, dtype=torch.long)}
    RecordingGRPOTrainer._drop_zero_advantage_groups(SimpleNamespace(num_generations=2), out)
    assert "tool_mask" not in out
