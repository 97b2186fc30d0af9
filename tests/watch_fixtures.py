"""Shared fixtures of the watch / adapters / report tests: real TRL runs of the embedded engine.

One run writes three real logs at once: the RFT-FaultBench (OpenRLHF) layout through
``RunWriter``, a JSONL of TRL ``on_log`` dicts through ``JsonlLogCallback``, and TRL's own
``trainer_state.json`` (``Trainer.state.save_to_json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from rftfm.bench.runner import build_trainer
from rftfm.integrations.trl_log import JsonlLogCallback
from rftfm.io.faultbench import RunWriter
from rftfm.records import RunInfo


@dataclass
class RealRun:
    info: RunInfo
    run_dir: Path  # RFT-FaultBench layout (step + trajectory JSONL)
    trl_jsonl: Path  # on_log dicts, one JSON object per line
    trainer_state: Path  # trainer_state.json with log_history
    on_log: list[dict]  # what the callback received, in memory


class _Collect(TrainerCallback):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append({"step": state.global_step, **dict(logs or {})})


def train_real_run(root: Path, run_id: str = "trl-run", num_steps: int = 6, seed: int = 3, **fault) -> RealRun:
    torch.set_num_threads(1)
    info = RunInfo(
        run_id=run_id,
        group=f"{fault['fault_family']}_{fault['fault_strength']}_fault" if fault else "normal",
        task_group="arith_a",
        model_size="xs",
        seed=seed,
        num_steps=num_steps,
        control_or_fault="fault" if fault else "normal",
        **fault,
    )
    root.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(root / "bench", info)
    collect = _Collect()
    jsonl = root / f"{run_id}.jsonl"
    trainer = build_trainer(
        info, sinks=[writer], callbacks=[JsonlLogCallback(jsonl), collect], output_dir=str(root / "trl_out")
    )
    trainer.train()
    run_dir = writer.commit()
    state = root / "trainer_state.json"
    trainer.state.save_to_json(str(state))
    return RealRun(info, run_dir, jsonl, state, collect.rows)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
