"""The one schema of rftfm: run descriptions, train-step records and trajectory records.

Everything that produces training dynamics (the embedded engine, log adapters, the
published-layout reader) emits these types; everything that consumes them (detector,
diagnoser, remediator, report) reads only these types.

Fields a source does not provide are ``None`` ("missing"), never invented. Fields this
schema does not know are kept in ``extra``. The fault-injection label lives in
``fault_injection`` and is ground truth for evaluation only: detectors and diagnosers
must never read it (see :data:`LABEL_FIELDS`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

RunKind = Literal["fault", "control", "normal"]
Strength = Literal["easy", "hard"]

#: Column names that carry labels; feature extraction must drop them.
LABEL_FIELDS = frozenset(
    {
        "fault_injection",
        "fault_injection_type",
        "fault_injection_strength",
        "fault_active",
        "fault_family",
        "fault_type",
        "fault_strength",
        "control_or_fault",
        "onset_step",
    }
)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=False)
    schema_version: int = SCHEMA_VERSION


class FaultInjection(BaseModel):
    """Ground-truth label of what was injected (never a detector feature)."""

    model_config = ConfigDict(extra="allow")
    fault_injection_type: str | None = None
    fault_injection_strength: Strength | None = None
    active: bool = False


class RunInfo(_Record):
    """One training run: its configuration and its label."""

    run_id: str
    group: str = Field(description="benchmark group directory, e.g. 'rf_hard_fault' or 'normal'")
    task_group: str
    model_size: str | None = None
    seed: int | None = None
    control_or_fault: RunKind = "normal"
    fault_family: str | None = None
    fault_type: str | None = None
    fault_strength: Strength | None = None
    onset_step: int | None = Field(None, description="first step (1-based) at which the fault acts")
    num_steps: int | None = None
    prompts_per_step: int | None = None
    num_generations: int | None = None
    learning_rate: float | None = Field(None, description="peak learning rate (after warm-up, before decay)")
    beta: float | None = None
    temperature: float | None = None
    max_completion_length: int | None = None
    eval_every: int | None = Field(None, description="held-out accuracy every this many train steps")
    model_family: str | None = Field(None, description="decoder family, e.g. 'gpt2' or 'qwen2'")
    lr_scheduler: str | None = Field(None, description="learning-rate schedule: 'constant', 'linear' or 'cosine'")
    warmup_ratio: float | None = Field(None, description="share of the steps spent warming the learning rate up")
    loss_type: str | None = Field(None, description="TRL GRPO loss aggregation, e.g. 'grpo', 'dr_grpo', 'dapo', 'bnpo'")
    scale_rewards: str | None = Field(None, description="advantage scaling: 'group', 'batch' or 'none'")
    epsilon: float | None = Field(None, description="lower clip range of the importance ratio")
    epsilon_high: float | None = Field(None, description="upper clip range of the importance ratio")
    logging_steps: int | None = Field(None, description="one step record per this many train steps")
    config_id: str | None = Field(None, description="name of the run's configuration (every axis but seed and fault)")
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_faulty(self) -> bool:
        return self.control_or_fault == "fault"


class StepRecord(_Record):
    """Metrics of one optimiser step, as logged live by the trainer."""

    run_id: str
    step: int = Field(ge=0)
    reward_mean: float | None = None
    reward_std: float | None = None
    eval_accuracy: float | None = Field(
        None, description="strict-verifier accuracy of the greedy policy on the fixed held-out prompts"
    )
    kl: float | None = None
    entropy: float | None = None
    policy_loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_region: float | None = None
    completion_length_mean: float | None = None
    completion_length_max: float | None = None
    truncated_ratio: float | None = None
    frac_zero_std_groups: float | None = None
    tool_call_frequency: float | None = Field(None, description="tool calls per completion (TRL: tools/call_frequency)")
    tool_failure_frequency: float | None = Field(
        None, description="failed tool calls per tool call, 0 without calls (TRL: tools/failure_frequency)"
    )
    step_time_s: float | None = None
    extra: dict[str, float | None] = Field(default_factory=dict)
    fault_injection: FaultInjection | None = None


class TrajectoryFlags(BaseModel):
    model_config = ConfigDict(extra="allow")
    empty_response: bool = False
    short_response: bool = False
    long_response: bool = False
    truncated: bool = False


class TrajectoryRecord(_Record):
    """One sampled completion of one prompt at one rollout step."""

    run_id: str
    rollout_step: int = Field(ge=0)
    prompt_id: str
    group_id: int = Field(ge=0, description="index of the prompt group within the step")
    reward: float | None = None
    response_length: int | None = None
    advantage: float | None = None
    ret: float | None = Field(None, alias="return")
    repetition_ratio: float | None = None
    unique_token_ratio: float | None = None
    tool_call_count: int = 0
    tool_error_count: int = 0
    flags: TrajectoryFlags = Field(default_factory=TrajectoryFlags)
    completion: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    fault_injection: FaultInjection | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: The step metrics every detector may use (in this order); everything else is extra.
STEP_METRICS: tuple[str, ...] = (
    "reward_mean",
    "reward_std",
    "eval_accuracy",
    "kl",
    "entropy",
    "policy_loss",
    "grad_norm",
    "learning_rate",
    "clip_ratio_low",
    "clip_ratio_high",
    "clip_ratio_region",
    "completion_length_mean",
    "completion_length_max",
    "truncated_ratio",
    "frac_zero_std_groups",
    "tool_call_frequency",
    "tool_failure_frequency",
    "step_time_s",
)

#: Numeric per-trajectory fields aggregated per step.
TRAJECTORY_METRICS: tuple[str, ...] = (
    "reward",
    "response_length",
    "advantage",
    "ret",
    "repetition_ratio",
    "unique_token_ratio",
    "tool_call_count",
    "tool_error_count",
)

TRAJECTORY_FLAGS: tuple[str, ...] = ("empty_response", "short_response", "long_response", "truncated")


def finite_or_none(value: Any) -> float | None:
    """Return ``value`` as a finite float, or ``None`` for missing, NaN, inf and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        return None
    return number if math.isfinite(number) else None
