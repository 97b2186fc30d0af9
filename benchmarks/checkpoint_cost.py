"""Cost of one loop checkpoint (model safetensors + optimiser / scheduler / RNG state + checksums), flushed to
disk (``Checkpointer(durable=True)``) or not (the default), for the benchmark's GPT-2 sizes, in one process; and,
not flushed, with the SHA-256 checksums used before XXH3-128 (the settings alternate, so a drift of the machine's
speed falls on both).

    python benchmarks/checkpoint_cost.py [--repeats 20] > docs/results/checkpoint-cost.txt
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from rftfm.engine.model import SIZES, build_model
from rftfm.fm import checkpoint
from rftfm.fm.checkpoint import Checkpointer

xxh3_of_file = checkpoint.file_checksum


def sha256_of_file(path: Path) -> str:
    """The checksum checkpoints used before XXH3-128 (for the comparison only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("Written by `python benchmarks/checkpoint_cost.py`: ms per checkpoint, median of", args.repeats, "saves;")
    print("sha256 ms: not flushed, with the SHA-256 checksums used before XXH3-128 (settings alternate step by step).")
    print(
        f"{'size':>5} {'params':>10} {'flushed ms':>11} {'not flushed ms':>15} {'ratio':>6} {'sha256 ms':>10} "
        f"{'sha/xxh3':>10}"
    )
    for size in SIZES:
        torch.manual_seed(0)
        model = build_model(size)
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
        optimizer.step()  # Adam moments exist, as in a run
        times: dict[str, list[float]] = {"flushed": [], "default": [], "sha256": []}
        with tempfile.TemporaryDirectory() as root:
            checkpointers = {
                "flushed": Checkpointer(Path(root) / "flushed", durable=True),
                "default": Checkpointer(Path(root) / "default"),
                "sha256": Checkpointer(Path(root) / "sha256"),
            }
            for step in range(1, args.repeats + 1):
                for setting, checkpointer in checkpointers.items():
                    checkpoint.file_checksum = sha256_of_file if setting == "sha256" else xxh3_of_file
                    start = time.perf_counter()
                    checkpointer.save(step, model, optimizer)
                    times[setting].append(time.perf_counter() - start)
        checkpoint.file_checksum = xxh3_of_file
        cost = {setting: 1000 * sorted(t)[len(t) // 2] for setting, t in times.items()}
        params = sum(p.numel() for p in model.parameters())
        flush_ratio, sha_ratio = cost["flushed"] / cost["default"], cost["sha256"] / cost["default"]
        print(
            f"{size:>5} {params:>10,} {cost['flushed']:>11.1f} {cost['default']:>15.1f} {flush_ratio:>6.2f} "
            f"{cost['sha256']:>10.1f} {sha_ratio:>10.2f}"
        )


if __name__ == "__main__":
    main()
