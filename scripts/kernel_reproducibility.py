"""Is benchmark generation bit-for-bit reproducible, and what changes on a CPU with other vector instructions?

Trains the same clean run (a task, a seed, a configuration) in fresh processes: twice with torch's default CPU
kernels, then with each ``ATEN_CPU_CAPABILITY`` this machine can run (torch picks AVX512, AVX2 or plain
kernels by CPU; forcing a lower one stands in for a machine without the higher one). Every step record and
trajectory record is compared field by field against the first run (the wall-clock step time left out).

    python scripts/kernel_reproducibility.py --steps 80 > docs/results/kernel-reproducibility.md
    python scripts/kernel_reproducibility.py --task tool --config classic --steps 200 \
        > docs/results/kernel-reproducibility-tool-200.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

TIMINGS = ("step_time_s",)  # wall-clock fields: never reproducible, not compared


def train(out: Path, task: str, seed: int, steps: int, config: str) -> None:
    """(Child process) train the clean run and write its records as JSON."""
    import torch

    torch.set_num_threads(1)  # as the generator does
    from rftfm.bench.fingerprints import clean_info
    from rftfm.bench.runner import train_run

    records: list[dict[str, Any]] = []

    def sink(record: Any, trajectories: list[Any]) -> None:
        row = record.model_dump(mode="json")
        for name in TIMINGS:
            row.pop(name, None)
        row.get("extra", {}).pop("step_time", None)
        row["trajectories"] = [t.model_dump(mode="json") for t in trajectories]
        records.append(row)

    train_run(clean_info(task, seed, steps, config=config), sinks=[sink])
    payload = {"capability": torch.backends.cpu.get_cpu_capability(), "records": records}
    out.write_text(json.dumps(payload), encoding="utf-8")


def differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[Counter, dict[str, int], float]:
    """Per field: how many records differ, the first step that does, and the largest relative difference."""
    counts: Counter = Counter()
    first: dict[str, int] = {}
    largest = 0.0

    def note(field: str, step: int, x: Any, y: Any) -> None:
        nonlocal largest
        counts[field] += 1
        first.setdefault(field, step)
        if isinstance(x, float) and isinstance(y, float) and max(abs(x), abs(y)) > 0:
            largest = max(largest, abs(x - y) / max(abs(x), abs(y)))

    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key == "trajectories":
                for ta, tb in zip(value, rb[key]):
                    for field in ta:
                        if ta[field] != tb.get(field):
                            note(f"trajectory.{field}", ra["step"], ta[field], tb.get(field))
            elif value != rb.get(key):
                note(key, ra["step"], value, rb.get(key))
    if len(a) != len(b):
        counts["record count"] += 1
    return counts, first, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arith_a")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--config", default="qwen2-linear", help="a configuration of rftfm.bench.fingerprints")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        train(args.child, args.task, args.seed, args.steps, args.config)
        return
    runs = [("default kernels", None), ("default kernels, again", None)]
    runs += [(f"ATEN_CPU_CAPABILITY={c}", c) for c in ("avx2", "default")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, capability) in enumerate(runs):
            out = Path(tmp) / f"{i}.json"
            env = {**os.environ, **({"ATEN_CPU_CAPABILITY": capability} if capability else {})}
            command = [sys.executable, __file__, "--child", str(out), "--task", args.task, "--seed", str(args.seed),
                       "--steps", str(args.steps), "--config", args.config]
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results.append((label, json.loads(out.read_text(encoding="utf-8"))))
    reference = results[0][1]["records"]
    trajectories = sum(len(r["trajectories"]) for r in reference)
    command = (f"python scripts/kernel_reproducibility.py --task {args.task} --seed {args.seed} --steps {args.steps} "
               f"--config {args.config}")
    print(f"# Generation across CPU kernels\n\n*Written by `{command}`* -- one clean run ({args.task}, seed "
          f"{args.seed}, configuration `{args.config}`, {args.steps} steps, one thread; {len(reference)} step "
          f"records, {trajectories:,} trajectory records), each in a fresh process, compared field by field with the "
          "first (wall-clock step time left out).\n")
    print("| run | kernels torch used | records differing, per field (first step) | largest relative difference |")
    print("|---|---|---|---|")
    for label, payload in results:
        counts, first, largest = differences(reference, payload["records"])
        fields = ", ".join(f"{f} {n} ({first.get(f, '-')})" for f, n in counts.most_common()) or "none: identical"
        print(f"| {label} | {payload['capability']} | {fields} | {largest:.1e} |")


if __name__ == "__main__":
    main()
