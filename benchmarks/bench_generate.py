"""Generator throughput per model family and size: what one benchmark run costs on one core.

For every (family, size) it trains clean runs of the recording engine (RecordingGRPOTrainer:
fault hooks, per-step and per-trajectory records, held-out eval) in one single-threaded
process, at the published configuration (8 prompts x 8 generations, 10-token completions),
and prints, per size, in CPU seconds of that process (other jobs may share the cores; CPU time is
what a core of its own would take): trainer set-up seconds, seconds per train step (rollout + loss +
update, eval excluded), seconds per held-out evaluation, and trajectories per second.
These figures size the presets (``rftfm.bench.presets`` estimates a preset's wall time from them).

    python benchmarks/bench_generate.py [--steps 12] [--task arith_a] [--families gpt2,qwen2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rftfm.bench.runner import build_trainer, quiet
from rftfm.engine.model import MODEL_FAMILIES, SIZES, parameter_count
from rftfm.engine.sft import load_warm_start
from rftfm.records import RunInfo


def measure(family: str, size: str, task: str, steps: int, seed: int, generations: int = 8, prompts: int = 8,
            max_length: int = 10) -> dict[str, float]:
    load_warm_start(task, size, family)  # the warm start is cached once, not part of a run's cost
    info = RunInfo(run_id=f"bench-{family}-{size}", group="normal", task_group=task, model_size=size, model_family=family,
                   seed=seed, num_steps=steps, control_or_fault="normal", num_generations=generations,
                   prompts_per_step=prompts, max_completion_length=max_length)
    step_times: list[float] = []
    trajectories = 0

    def sink(step, trajs) -> None:
        nonlocal trajectories
        step_times.append(step.step_time_s)
        trajectories += len(trajs)

    start, cpu_start = time.perf_counter(), time.process_time()
    trainer = build_trainer(info, sinks=[sink])
    setup, cpu_setup = time.perf_counter() - start, time.process_time() - cpu_start
    trainer.train()
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    train_step = statistics.median(step_times[1:])  # the first step also pays one-off warm-up costs
    eval_s = max((total - setup - sum(step_times)) / len(step_times), 0.0)
    # other jobs share the cores: CPU seconds of this process are what a core of its own would take
    cpu_share = (cpu_total - cpu_setup) / (total - setup)
    return {"family": family, "size": size, "params": parameter_count(size, family), "setup_s": cpu_setup,
            "train_step_s": train_step * cpu_share, "eval_s": eval_s * cpu_share,
            "trajectories_per_s": trajectories / (cpu_total - cpu_setup), "run_s": cpu_total, "wall_s": total,
            "steps": len(step_times), "trajectories_per_step": generations * prompts, "max_completion_length": max_length}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--task", default="arith_a")
    parser.add_argument("--families", default=",".join(MODEL_FAMILIES))
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--shapes", default="8x8", help="generations x prompts per step, comma-separated")
    parser.add_argument("--max-length", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet()
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    rows = [measure(f, s, args.task, args.steps, args.seed, g, p, args.max_length)
            for f in args.families.split(",") for s in args.sizes.split(",") for g, p in shapes]
    print(f"one core, task {args.task}, {args.steps} steps, completions up to {args.max_length} tokens, eval of 128 held-out "
          "prompts every step;")
    print("CPU seconds of the run's process (wall time scaled by its CPU share, as other jobs share the cores)")
    print("| family | size | parameters | trajectories / step | set-up s | train step s | eval s | trajectories/s | run s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['family']} | {r['size']} | {r['params']:,} | {r['trajectories_per_step']} | {r['setup_s']:.2f} "
              f"| {r['train_step_s']:.3f} | {r['eval_s']:.3f} | {r['trajectories_per_s']:.0f} | {r['run_s']:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
