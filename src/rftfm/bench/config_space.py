"""The space of training configurations RFT-FaultBench draws its runs from.

A configuration is every setting of a run except its seed and its fault. Each one is drawn
deterministically from its own seed (:func:`draw_config`); a preset draws a pool of them and
places its normal, faulty and control runs on the pool (``rftfm.bench.presets``).

| axis | values | how it is drawn |
|---|---|---|
| task group | the 8 of ``rftfm.engine.tasks`` | uniform (or given) |
| model family | gpt2, qwen2 | uniform (or given) |
| model size | xs, s, m, l (76 k to 1.8 M parameters) | weights :data:`SIZE_WEIGHTS` (smaller ones cost less) |
| learning rate (peak) | 5e-5 .. 1.6e-3 (1.5 decades) | log-uniform |
| schedule | constant, linear, cosine decay | 40 / 30 / 30 % |
| warm-up ratio | 0, 0.05, 0.1 of the steps | uniform |
| beta (KL coefficient) | 0 (no reference model, no KL logged), or 0.005 .. 0.1 | 40 % zero, else log-uniform |
| generations x prompts per step | 4x8, 4x16, 8x4, 8x8, 16x2, 16x4 (32 or 64 trajectories) | uniform |
| loss_type | grpo, dr_grpo, dapo, bnpo | uniform |
| scale_rewards | group, batch, none | 50 / 25 / 25 % |
| temperature | 0.7, 0.85, 1.0, 1.1 | uniform |
| max_completion_length | the task's longest answer + EOS, plus 0, 2, 4 or 6 tokens | uniform |
| epsilon / epsilon_high | 0.1, 0.2, 0.3 / equal, or DAPO's clip-higher max(epsilon, 0.28) | uniform / 60 : 40 |
| logging_steps | 1, 2, 5 | 70 / 15 / 15 % |
| num_steps | :data:`RUN_LENGTHS` (20 .. 200), a multiple of logging_steps | weights of the preset |
| eval_every | every logged step up to 40 steps; longer runs about 40 evaluations | derived |

The published benchmark's configuration (``rftfm.bench.runner.DEFAULTS``: 8 x 8 trajectories,
LR 3e-4 constant, beta 0.04, 28 steps, GPT-2) is not drawn from here; the ``classic`` presets keep it.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from rftfm.engine.model import MODEL_FAMILIES, SIZES
from rftfm.engine.tasks import TASK_GROUPS, task_group
from rftfm.records import RunInfo

SIZE_WEIGHTS: dict[str, float] = {"xs": 0.35, "s": 0.3, "m": 0.2, "l": 0.15}
LR_RANGE = (5e-5, 1.6e-3)
SCHEDULES = (("constant", 0.4), ("linear", 0.3), ("cosine", 0.3))
WARMUP_RATIOS = (0.0, 0.05, 0.1)
BETA_ZERO_SHARE = 0.4
BETA_RANGE = (0.005, 0.1)
#: (num_generations, prompts_per_step)
GROUP_SHAPES: tuple[tuple[int, int], ...] = ((4, 8), (4, 16), (8, 4), (8, 8), (16, 2), (16, 4))
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS = (("group", 0.5), ("batch", 0.25), ("none", 0.25))
TEMPERATURES = (0.7, 0.85, 1.0, 1.1)
EXTRA_COMPLETION_TOKENS = (0, 2, 4, 6)
EPSILONS = (0.1, 0.2, 0.3)
CLIP_HIGHER = 0.28  # DAPO's recommended upper clip range
CLIP_HIGHER_SHARE = 0.4
LOGGING_STEPS = ((1, 0.7), (2, 0.15), (5, 0.15))
RUN_LENGTHS = (20, 30, 40, 60, 100, 200)
MAX_EVALS = 40  # longer runs evaluate about this many times


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a run but its seed and its fault (the fields are :class:`RunInfo` fields)."""

    task_group: str
    model_family: str
    model_size: str
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    beta: float
    num_generations: int
    prompts_per_step: int
    loss_type: str
    scale_rewards: str
    temperature: float
    max_completion_length: int
    epsilon: float
    epsilon_high: float
    logging_steps: int
    num_steps: int
    eval_every: int

    @property
    def config_id(self) -> str:
        """A stable, readable name: task, model and a hash of every other axis."""
        digest = zlib.crc32(json.dumps(asdict(self), sort_keys=True).encode()) & 0xFFFFFF
        return f"{self.task_group}-{self.model_family}-{self.model_size}-{digest:06x}"

    @property
    def trajectories_per_step(self) -> int:
        return self.num_generations * self.prompts_per_step

    def fields(self) -> dict[str, Any]:
        return {**asdict(self), "config_id": self.config_id}

    def run(self, **label: Any) -> RunInfo:
        """A run of this configuration; ``label`` holds run_id, group, seed, kind, fault fields, onset."""
        return RunInfo(**self.fields(), **label)


def _weighted(rng: random.Random, options: Sequence[tuple[Any, float]]) -> Any:
    values, weights = zip(*options)
    return rng.choices(values, weights=weights)[0]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")


def eval_every(num_steps: int, logging_steps: int) -> int:
    """Every logged step for runs up to :data:`MAX_EVALS` steps, else about :data:`MAX_EVALS` evaluations."""
    every = max(1, math.ceil(num_steps / MAX_EVALS))
    return math.ceil(every / logging_steps) * logging_steps


def draw_config(
    seed: int,
    *,
    task_groups: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    sizes: dict[str, float] | None = None,
    run_lengths: Sequence[tuple[int, float]] | None = None,
    group_shapes: Sequence[tuple[int, int]] = GROUP_SHAPES,
    beta_zero: bool | None = None,
) -> TrainingConfig:
    """The configuration of seed ``seed``; keyword arguments narrow an axis (a preset's constraints)."""
    rng = random.Random(zlib.crc32(f"rftfm-config-{seed}".encode()))
    task = rng.choice(list(task_groups or TASK_GROUPS))
    family = rng.choice(list(families or MODEL_FAMILIES))
    size = _weighted(rng, list((sizes or SIZE_WEIGHTS).items()))
    logging = _weighted(rng, LOGGING_STEPS)
    length = _weighted(rng, run_lengths or [(n, 1.0) for n in RUN_LENGTHS])
    num_steps = max(logging, round(length / logging) * logging)
    zero_beta = rng.random() < BETA_ZERO_SHARE if beta_zero is None else beta_zero
    beta = 0.0 if zero_beta else _log_uniform(rng, *BETA_RANGE)
    generations, prompts = rng.choice(list(group_shapes))
    epsilon = rng.choice(EPSILONS)
    return TrainingConfig(
        task_group=task,
        model_family=family,
        model_size=size,
        learning_rate=_log_uniform(rng, *LR_RANGE),
        lr_scheduler=_weighted(rng, SCHEDULES),
        warmup_ratio=rng.choice(WARMUP_RATIOS),
        beta=beta,
        num_generations=generations,
        prompts_per_step=prompts,
        loss_type=rng.choice(LOSS_TYPES),
        scale_rewards=_weighted(rng, SCALE_REWARDS),
        temperature=rng.choice(TEMPERATURES),
        max_completion_length=task_group(task).min_completion_length + rng.choice(EXTRA_COMPLETION_TOKENS),
        epsilon=epsilon,
        epsilon_high=max(epsilon, CLIP_HIGHER) if rng.random() < CLIP_HIGHER_SHARE else epsilon,
        logging_steps=logging,
        num_steps=num_steps,
        eval_every=eval_every(num_steps, logging),
    )


def with_length(config: TrainingConfig, num_steps: int) -> TrainingConfig:
    """``config`` with another run length (kept a multiple of its logging steps)."""
    num_steps = max(config.logging_steps, round(num_steps / config.logging_steps) * config.logging_steps)
    return replace(config, num_steps=num_steps, eval_every=eval_every(num_steps, config.logging_steps))


CONFIG_AXES: tuple[str, ...] = tuple(TrainingConfig.__dataclass_fields__)
assert set(CONFIG_AXES) <= set(RunInfo.model_fields), "every axis is a RunInfo field"
assert set(SIZE_WEIGHTS) == set(SIZES)
