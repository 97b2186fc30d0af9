"""Synthetic RFT records for the detector tests (seeded, no training, no /work data).

Normal runs: reward rises, KL grows, entropy falls with the step, plus noise. A faulty run
adds a shift to chosen signals from its onset step on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rftfm.io.faultbench import RunWriter, write_registries
from rftfm.records import RunInfo, StepRecord, TrajectoryFlags, TrajectoryRecord

TRAJS = 16


def synth_run(
    run_id: str,
    seed: int,
    steps: int = 12,
    onset: int | None = None,
    shift: dict[str, float] | None = None,
    trajs: int = TRAJS,
    missing_eval: bool = False,
) -> list[tuple[StepRecord, list[TrajectoryRecord]]]:
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 0.02)
    out = []
    for s in range(1, steps + 1):
        on = onset is not None and s >= onset
        mult = {k: (v if on else 0.0) for k, v in (shift or {}).items()}
        p = float(np.clip(0.2 + 0.02 * s + offset + mult.get("reward", 0.0), 0.02, 0.98))
        rewards = (rng.random(trajs) < p).astype(float)
        lengths = rng.poisson(6 + 4 * mult.get("length", 0.0), trajs) + 1
        errors = (rng.random(trajs) < mult.get("tool_error", 0.0)).astype(int)
        step = StepRecord(
            run_id=run_id,
            step=s,
            reward_mean=float(rewards.mean()),
            reward_std=float(rewards.std()),
            eval_accuracy=None if missing_eval else float(np.clip(p + rng.normal(0, 0.02), 0, 1)),
            kl=float(abs(0.01 * s + rng.normal(0, 0.004)) * (1 + mult.get("kl", 0.0))),
            entropy=float(1.5 - 0.02 * s + rng.normal(0, 0.02)),
            policy_loss=float(rng.normal(0, 0.05)),
            grad_norm=float(1.0 + abs(rng.normal(0, 0.1)) + mult.get("grad", 0.0)),
            learning_rate=1e-4,
            clip_ratio_region=0.0,
            completion_length_mean=float(lengths.mean()),
            completion_length_max=float(lengths.max()),
            truncated_ratio=0.0,
            frac_zero_std_groups=float(rng.integers(0, 3) / 4),
            step_time_s=float(rng.uniform(0.1, 0.5)),
        )
        trajectories = [
            TrajectoryRecord(
                run_id=run_id,
                rollout_step=s,
                prompt_id=f"p{i // 4}",
                group_id=i // 4,
                reward=float(rewards[i]),
                response_length=int(lengths[i]),
                advantage=float(rewards[i] - rewards.mean()),
                repetition_ratio=float(rng.uniform(0, 0.1)),
                unique_token_ratio=float(rng.uniform(0.8, 1.0)),
                tool_call_count=1,
                tool_error_count=int(errors[i]),
                flags=TrajectoryFlags(),
            )
            for i in range(trajs)
        ]
        out.append((step, trajectories))
    return out


def write_benchmark(
    root: Path, n_normal: int = 24, n_control: int = 8, n_fault: int = 8, steps: int = 12
) -> list[RunInfo]:
    """A small benchmark in the published layout: normal runs, rf hard faults (KL x3 from step 5) with controls,
    rf easy faults."""
    infos = []
    seed = 0
    for i in range(n_normal):
        seed += 1
        infos.append(
            (
                RunInfo(
                    run_id=f"normal-{seed}",
                    group="normal",
                    task_group="arith_a",
                    model_size="xs",
                    seed=seed,
                    control_or_fault="normal",
                    num_steps=steps,
                ),
                None,
            )
        )
    for i in range(n_fault):
        for strength, shift in (("easy", {"kl": 20.0, "grad": 5.0}), ("hard", {"kl": 3.0})):
            seed += 1
            onset = 1 if i % 2 else 5
            infos.append(
                (
                    RunInfo(
                        run_id=f"fault-{strength}-{seed}",
                        group=f"rf_{strength}_fault",
                        task_group="arith_a",
                        model_size="xs",
                        seed=seed,
                        control_or_fault="fault",
                        fault_family="rf",
                        fault_type="reward_scale",
                        fault_strength=strength,
                        onset_step=onset,
                        num_steps=steps,
                    ),
                    shift,
                )
            )
    for i in range(n_control):
        seed += 1
        infos.append(
            (
                RunInfo(
                    run_id=f"control-{seed}",
                    group="rf_hard_fault",
                    task_group="arith_a",
                    model_size="xs",
                    seed=seed,
                    control_or_fault="control",
                    fault_family="rf",
                    onset_step=5,
                    num_steps=steps,
                ),
                None,
            )
        )
    for info, shift in infos:
        writer = RunWriter(root, info)
        for step, trajectories in synth_run(info.run_id, info.seed, steps, info.onset_step, shift):
            writer(step, trajectories)
        writer.commit()
    write_registries(root, [i for i, _ in infos])
    return [i for i, _ in infos]


def test_synthetic_runs_are_seeded_and_shifted():
    a = synth_run("a", 1)
    b = synth_run("a", 1)
    assert [s.model_dump() for s, _ in a] == [s.model_dump() for s, _ in b]
    faulty = synth_run("f", 1, onset=5, shift={"kl": 3.0})
    assert faulty[3][0].kl == a[3][0].kl
    assert faulty[6][0].kl > 3 * a[6][0].kl
