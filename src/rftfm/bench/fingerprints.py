"""Matched-pair fingerprints: a faulty run against the clean run with the same seed.

Used by the per-type fingerprint tests and by ``rftfm bench fingerprints`` (docs table).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def moved(self, signal: str, direction: str) -> bool:
        delta = self.faulty[signal] - self.clean[signal]
        return delta > 0 if direction == "up" else delta < 0


def clean_info(task_group: str, seed: int, num_steps: int, size: str = "xs") -> RunInfo:
    return RunInfo(run_id=f"clean-{task_group}-s{seed}", group="normal", task_group=task_group, model_size=size,
                   seed=seed, num_steps=num_steps, control_or_fault="normal")


def matched_pair(fault: str, strength: Strength, seed: int = 3, num_steps: int = 10, size: str = "xs",
                 clean: dict[str, float] | None = None) -> MatchedPair:
    """Train the faulty run (onset at step 1) and, unless given, the clean run with the same seed."""
    ftype = fault_type(fault)
    task = FINGERPRINT_TASK[fault]
    info = RunInfo(run_id=f"{fault}-{strength}-s{seed}", group=f"{ftype.family}_{strength}_fault", task_group=task,
                   model_size=size, seed=seed, num_steps=num_steps, control_or_fault="fault",
                   fault_family=ftype.family, fault_type=fault, fault_strength=strength, onset_step=1)
    clean = clean if clean is not None else run_feature_means(clean_info(task, seed, num_steps, size))
    return MatchedPair(fault, strength, task, clean, run_feature_means(info))
