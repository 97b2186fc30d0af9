"""Matched-pair fingerprints: a faulty run against the clean run with the same seed.

Used by the per-type fingerprint tests and by ``rftfm bench fingerprints`` (docs table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rftfm.bench.runner import train_run
from rftfm.faults.taxonomy import FAULT_TYPES, Strength, fault_type
from rftfm.fm.features import FEATURES, step_features
from rftfm.records import RunInfo, StepRecord, TrajectoryRecord

#: Task group each type's fingerprint is measured on: TE types need the tool task; reward
#: hacking shows fastest where the shortcut beats the real skill (the tool task).
FINGERPRINT_TASK = {
    name: ("tool" if t.task_groups or name == "reward_hacking" else "arith_a") for name, t in FAULT_TYPES.items()
}


#: The configurations fingerprints are measured on: the published benchmark's (GPT-2, constant LR 3e-4,
#: beta 0.04, DAPO loss, 8 x 8 trajectories) and a second one that differs on every axis but the task.
FINGERPRINT_CONFIGS: dict[str, dict[str, Any]] = {
    "classic": {},
    "qwen2-cosine": dict(model_family="qwen2", model_size="xs", learning_rate=6e-4, lr_scheduler="cosine",
                         warmup_ratio=0.1, beta=0.02, loss_type="grpo", num_generations=16, prompts_per_step=4,
                         temperature=0.9, max_completion_length=12, epsilon=0.2, epsilon_high=0.28),
}


def run_feature_means(info: RunInfo) -> dict[str, float]:
    """Train ``info`` and return each feature's mean over the steps where the fault acts."""
    rows: list[dict[str, float | None]] = []
    onset = info.onset_step or 1

    def sink(step: StepRecord, trajectories: list[TrajectoryRecord]) -> None:
        if step.step >= onset:
            rows.append(step_features(step, trajectories))

    train_run(info, sinks=[sink])
    means = {}
    for name in FEATURES:
        values = [r[name] for r in rows if r[name] is not None]
        means[name] = float(np.mean(values)) if values else float("nan")
    return means


@dataclass
class MatchedPair:
    fault: str
    strength: Strength
    task_group: str
    clean: dict[str, float]
    faulty: dict[str, float]
    config: str = "classic"

    def moved(self, signal: str, direction: str) -> bool:
        delta = self.faulty[signal] - self.clean[signal]
        return delta > 0 if direction == "up" else delta < 0


def clean_info(task_group: str, seed: int, num_steps: int, size: str = "xs", config: str = "classic") -> RunInfo:
    settings = {"model_size": size, **FINGERPRINT_CONFIGS[config]}
    return RunInfo(run_id=f"clean-{task_group}-{config}-s{seed}", group="normal", task_group=task_group, seed=seed,
                   num_steps=num_steps, control_or_fault="normal", **settings)


def matched_pair(fault: str, strength: Strength, seed: int = 3, num_steps: int = 10, size: str = "xs",
                 clean: dict[str, float] | None = None, config: str = "classic") -> MatchedPair:
    """Train the faulty run (onset at step 1) and, unless given, the clean run with the same seed,
    both on the fingerprint configuration ``config`` (:data:`FINGERPRINT_CONFIGS`)."""
    ftype = fault_type(fault)
    task = FINGERPRINT_TASK[fault]
    clean_run = clean_info(task, seed, num_steps, size, config)
    info = clean_run.model_copy(update=dict(
        run_id=f"{fault}-{strength}-{config}-s{seed}", group=f"{ftype.family}_{strength}_fault",
        control_or_fault="fault", fault_family=ftype.family, fault_type=fault, fault_strength=strength, onset_step=1))
    clean = clean if clean is not None else run_feature_means(clean_run)
    return MatchedPair(fault, strength, task, clean, run_feature_means(info), config)
