"""Trainer knobs the remediation turns: tool retries, repeated verifier calls, DAPO dynamic sampling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rftfm.engine.tasks import ToolResult, with_retries
from rftfm.engine.trainer import RecordingGRPOTrainer
from rftfm.knobs import KNOBS, get_knob, set_knob


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
    trainer = SimpleNamespace(tool_retries=0, reward_samples=1, dynamic_sampling_rounds=0)
    for name in ("tool_retries", "reward_samples", "dynamic_sampling_rounds"):
        assert name in KNOBS
    set_knob(trainer, "tool_retries", 3.0)
    set_knob(trainer, "reward_samples", 4)
    set_knob(trainer, "dynamic_sampling_rounds", 16.0)
    assert [get_knob(trainer, n) for n in ("tool_retries", "reward_samples", "dynamic_sampling_rounds")] == [3, 4, 16]
    for name, bad in (("reward_samples", 0), ("tool_retries", -1), ("dynamic_sampling_rounds", -1)):
        with pytest.raises(ValueError):
            set_knob(trainer, name, bad)


def _batch(advantages: list[float], width: int, token: int) -> dict:
    n = len(advantages)
    return {"advantages": torch.tensor(advantages), "completion_ids": torch.full((n, width), token),
            "completion_mask": torch.ones(n, width, dtype=torch.long), "num_items_in_batch": torch.tensor(n * width),
            "prompt_ids": torch.zeros(n, 2, dtype=torch.long)}


def test_dynamic_sampling_swaps_only_empty_groups_for_informative_resamples() -> None:
    # groups of 2: group 0 empty, group 1 informative, group 2 empty
    out = _batch([0.0, 0.0, 1.0, -1.0, 0.0, 0.0], width=3, token=7)
    resample = _batch([0.5, -0.5, 0.2, -0.2, 0.0, 0.0], width=5, token=9)  # wider: completions are padded per round
    trainer = SimpleNamespace(num_generations=2, processing_class=SimpleNamespace(pad_token_id=0),
                              _outcomes=["a0", "a1", "b0", "b1", "c0", "c1"])

    def scored(inputs, step):
        trainer._outcomes = ["n0", "n1", "n2", "n3", "n4", "n5"]
        return resample

    trainer._scored_batch = scored
    assert RecordingGRPOTrainer._refill_zero_advantage_groups(trainer, out, [], 3) is True
    assert out["advantages"].tolist() == [0.5, -0.5, 1.0, -1.0, 0.0, 0.0]  # only group 0 was swapped
    assert out["completion_ids"].shape == (6, 5)
    assert out["completion_ids"][0].tolist() == [9] * 5 and out["completion_ids"][2].tolist() == [7, 7, 7, 0, 0]
    assert out["completion_mask"][2].tolist() == [1, 1, 1, 0, 0]
    assert int(out["num_items_in_batch"]) == 2 * 5 + 4 * 3
    assert trainer._outcomes == ["n0", "n1", "b0", "b1", "c0", "c1"]
    # nothing left to refill: no new round is sampled
    full = _batch([1.0, -1.0], width=2, token=7)
    trainer._scored_batch = lambda inputs, step: pytest.fail("sampled again")
    assert RecordingGRPOTrainer._refill_zero_advantage_groups(trainer, full, [], 3) is False
