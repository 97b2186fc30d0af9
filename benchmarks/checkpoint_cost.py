"""Cost of one loop checkpoint (model safetensors + optimiser / scheduler / RNG state + checksums), flushed to
disk (``Checkpointer(durable=True)``) or not (the default), for the benchmark's GPT-2 sizes, in one process.

    python benchmarks/checkpoint_cost.py [--repeats 20] > docs/results/checkpoint-cost.txt
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rftfm.engine.model import SIZES, build_model
from rftfm.fm.checkpoint import Checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("Written by `python benchmarks/checkpoint_cost.py`: ms per checkpoint, median of", args.repeats, "saves.")
    print(f"{'size':>5} {'params':>10} {'flushed ms':>11} {'not flushed ms':>15} {'ratio':>6}")
    for size in SIZES:
        torch.manual_seed(0)
        model = build_model(size)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
        optimizer.step()  # Adam moments exist, as in a run
        cost = {}
        for durable in (True, False):
            with tempfile.TemporaryDirectory() as root:
                checkpointer = Checkpointer(root, durable=durable)
                times = []
                for step in range(1, args.repeats + 1):
                    start = time.perf_counter()
                    checkpointer.save(step, model, optimizer)
                    times.append(time.perf_counter() - start)
            cost[durable] = 1000 * sorted(times)[len(times) // 2]
        params = sum(p.numel() for p in model.parameters())
        print(f"{size:>5} {params:>10,} {cost[True]:>11.1f} {cost[False]:>15.1f} {cost[True] / cost[False]:>6.2f}")


if __name__ == "__main__":
    main()
