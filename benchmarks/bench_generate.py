"""Generator throughput: train steps/s and trajectories/s per core of the embedded engine.

Runs, in one single-threaded process, N clean runs of the recording engine
(RecordingGRPOTrainer: fault hooks + per-step and per-trajectory records + per-step eval)
and, as the baseline, the same configuration on stock TRL GRPOTrainer with a plain reward
function and no recording. Prints both and the overhead ratio.

    python benchmarks/bench_generate.py [--runs 4] [--steps 28]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rftfm.bench.runner import build_trainer, quiet
from rftfm.engine.tasks import task_group
from rftfm.records import RunInfo


def stock_trl_seconds(info: RunInfo) -> float:
    """Same model, data and config on an un-subclassed GRPOTrainer."""
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    recording = build_trainer(info, output_dir=tempfile.mkdtemp())
    task = task_group(info.task_group)

    def reward(prompts, completions, answer, prompt_id, **_):
        return [float(task.verify(c, type("P", (), {"answer": int(a)})).correct) for c, a in zip(completions, answer)]

    stock = GRPOTrainer(model=recording.model, reward_funcs=[reward], args=recording.args,
                        train_dataset=recording.train_dataset, processing_class=recording.processing_class)
    stock.remove_callback(PrinterCallback)
    start = time.perf_counter()
    stock.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet()
    infos = [RunInfo(run_id=f"b{i}", group="normal", task_group=("arith_a", "arith_b", "tool")[i % 3], model_size="xs",
                     seed=100 + i, num_steps=args.steps, control_or_fault="normal") for i in range(args.runs)]
    build_trainer(infos[0])  # warm caches (SFT warm start, imports)

    steps = trajs = 0
    start = time.perf_counter()
    for info in infos:
        n = []
        trainer = build_trainer(info, sinks=[lambda s, t: n.append(len(t))])
        trainer.train()
        steps += len(n)
        trajs += sum(n)
    ours = time.perf_counter() - start
    stock = sum(stock_trl_seconds(info) for info in infos)

    print(f"recording engine, 1 core: {args.runs} runs x {args.steps} steps in {ours:.1f} s (incl. trainer set-up)")
    print(f"  {steps / ours:.2f} train steps/s/core, {trajs / ours:,.0f} trajectories/s/core")
    print(f"stock TRL GRPOTrainer, same runs (train() only, no recording, no eval): {steps / stock:.2f} steps/s/core")
    print(f"overhead ratio recording engine / stock TRL: {ours / stock:.2f}x")


if __name__ == "__main__":
    main()
