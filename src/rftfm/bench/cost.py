"""What generating a preset costs, from the measured generator throughput.

``benchmarks/bench_generate.py`` measures, per (model family, size, trajectories per step), the
CPU seconds of a train step and of a held-out evaluation on one core; a run then costs its
set-up plus its steps and evaluations (train-step cost interpolated linearly in the number of
trajectories between the measured shapes). This is an estimate for sizing presets, not a
measurement of a generation: ``metadata/generation_log.jsonl`` holds those.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from rftfm.records import RunInfo

#: Per-run CPU seconds outside the measured steps (trainer set-up, writing the run's files), measured
#: as the difference between whole-run and per-step time; see ``benchmarks/bench_generate.py``.
RUN_OVERHEAD_S = 1.5


class Throughput:
    """Measured step and evaluation costs, looked up by (family, size, trajectories per step)."""

    def __init__(self, rows: Iterable[dict[str, Any]]):
        steps: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        evals: dict[tuple[str, str], list[float]] = defaultdict(list)
        for row in rows:
            key = (row["family"], row["size"])
            steps[key][int(row.get("trajectories_per_step", 64))].append(float(row["train_step_s"]))
            evals[key].append(float(row["eval_s"]))
        self.steps = {k: {n: sum(v) / len(v) for n, v in shapes.items()} for k, shapes in steps.items()}
        self.evals = {k: sum(v) / len(v) for k, v in evals.items()}

    @classmethod
    def from_json(cls, path: str | Path) -> Throughput:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def step_seconds(self, family: str, size: str, trajectories: int) -> float:
        shapes = self.steps[family, size]
        known = sorted(shapes)
        if len(known) == 1:
            return shapes[known[0]] * trajectories / known[0]
        lo, hi = (known[0], known[1]) if trajectories <= known[1] else (known[-2], known[-1])
        return shapes[lo] + (shapes[hi] - shapes[lo]) * (trajectories - lo) / (hi - lo)

    def run_seconds(self, info: RunInfo) -> float:
        """Estimated CPU seconds of one run on one core."""
        family, size = info.model_family or "gpt2", info.model_size or "xs"
        steps = info.num_steps or 0
        evals = steps // (info.eval_every or 1)
        trajectories = (info.num_generations or 8) * (info.prompts_per_step or 8)
        return RUN_OVERHEAD_S + steps * self.step_seconds(family, size, trajectories) + evals * self.evals[family, size]

    def preset_seconds(self, runs: Iterable[RunInfo]) -> dict[str, float]:
        """Estimated CPU seconds of a list of runs, in total and per model size."""
        out: dict[str, float] = defaultdict(float)
        for info in runs:
            seconds = self.run_seconds(info)
            out["total"] += seconds
            out[info.model_size or "xs"] += seconds
        return dict(out)
