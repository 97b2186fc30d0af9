"""The knobs a GRPO user really has, read and set on a live TRL ``GRPOTrainer``.

Both bad configurations (fault injectors that model a wrong setting) and remediation act
through these setters, so remediation can only do what a user of the trainer could do.
"""

from __future__ import annotations

from typing import Any

KNOBS = (
    "learning_rate",
    "beta",
    "temperature",
    "max_completion_length",
    "repetition_penalty",
    "eos_bias",
    "epsilon",
    "scale_rewards",
    "mask_truncated_completions",
    "loss_type",
    "off_policy_mask_threshold",
    "entropy_coef",
    # knobs of the rollout environment / loss that stock TRL does not name; RecordingGRPOTrainer has
    # them, and a user's trainer declares them by carrying the attribute (see ``rftfm.fm.loop``)
    "tool_retries",
    "reward_samples",
    "dynamic_sampling_rounds",
)


def _set_generation(trainer: Any, key: str, value: Any) -> None:
    setattr(trainer.generation_config, key, value)
    trainer.generation_kwargs[key] = value


def configured_lr(optimizer: Any, scheduler: Any) -> float | None:
    """The LR the user configured: the scheduler's base LR (what ``set_knob`` sets, and what warmup /
    decay schedules scale every step), else the optimiser's; ``None`` without either."""
    base = getattr(scheduler, "base_lrs", None)
    if base:
        return float(base[0])
    return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None


def get_knob(trainer: Any, name: str) -> Any:
    if name == "learning_rate":  # the configured (peak) LR: a scheduler's base LR, not its value at this step
        return configured_lr(trainer.optimizer, trainer.lr_scheduler) or trainer.args.learning_rate
    if name == "epsilon":
        return trainer.epsilon_low
    if name == "repetition_penalty":
        return trainer.generation_config.repetition_penalty or 1.0
    if name == "eos_bias":
        bias = trainer.generation_config.sequence_bias or {}
        return next(iter(bias.values()), 0.0)
    if name not in KNOBS:
        raise KeyError(f"unknown knob {name!r}; known: {KNOBS}")
    return getattr(trainer, name)


def set_knob(trainer: Any, name: str, value: Any) -> None:
    """Set one knob on a running trainer (takes effect from the next rollout / optimiser step)."""
    if name == "learning_rate":
        value = float(value)
        if trainer.optimizer is not None:
            for group in trainer.optimizer.param_groups:
                group["lr"] = value
        if trainer.lr_scheduler is not None and hasattr(trainer.lr_scheduler, "base_lrs"):
            trainer.lr_scheduler.base_lrs = [value for _ in trainer.lr_scheduler.base_lrs]
        trainer.args.learning_rate = value
    elif name == "beta":
        if trainer.ref_model is None and float(value) != 0.0:
            raise ValueError("beta > 0 needs a reference model; this trainer was built with beta = 0")
        trainer.beta = float(value)
    elif name == "temperature":
        trainer.temperature = float(value)
        _set_generation(trainer, "temperature", float(value))
    elif name == "max_completion_length":
        trainer.max_completion_length = int(value)
        _set_generation(trainer, "max_new_tokens", int(value))
    elif name == "repetition_penalty":
        _set_generation(trainer, "repetition_penalty", float(value))
    elif name == "eos_bias":
        eos = trainer.processing_class.eos_token_id
        _set_generation(trainer, "sequence_bias", {(eos,): float(value)} if value else None)
    elif name == "epsilon":
        trainer.epsilon_low = trainer.epsilon_high = float(value)
    elif name == "scale_rewards":
        if value not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, not {value!r}")
        trainer.scale_rewards = value
    elif name == "mask_truncated_completions":
        trainer.mask_truncated_completions = bool(value)
    elif name == "loss_type":
        trainer.loss_type = str(value)
    elif name == "off_policy_mask_threshold":  # DeepSeek-V3.2 off-policy sequence masking (TRL GRPOConfig)
        trainer.off_policy_mask_threshold = None if value is None else float(value)
    elif name == "entropy_coef":  # TRL's entropy regularisation: loss - entropy_coef x mean token entropy
        trainer.entropy_coef = float(value)
        # TRL decides once, at construction, whether the entropy term is computed at all
        trainer._entropy_bonus_enabled = trainer.entropy_coef != 0.0 or trainer.use_adaptive_entropy
    elif name in ("tool_retries", "reward_samples", "dynamic_sampling_rounds"):
        value, least = int(value), (1 if name == "reward_samples" else 0)
        if value < least:
            raise ValueError(f"{name} must be >= {least}, not {value}")
        setattr(trainer, name, value)
    else:
        raise KeyError(f"unknown knob {name!r}; known: {KNOBS}")
