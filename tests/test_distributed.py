"""The closed loop under DDP: 2 processes on the CPU (gloo) through torchrun, every rank making the same changes.

Unit tests of the op recording and replay, and (slow) two real 2-process runs of the user-run harness
(scripts/ddp_user_run.py): a mid-run LR spike rolled back on both ranks, and a run without a fault.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState

from rftfm.fm.checkpoint import Checkpointer
from rftfm.fm.handle import TrainerHandle
from rftfm.integrations import distributed

ROOT = Path(__file__).resolve().parents[1]


def handles(tmp_path):
    out = []
    for rank in (0, 1):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        cls = distributed.RecordingHandle if rank == 0 else TrainerHandle
        out.append(
            (
                cls(model=model, optimizer=opt, control=TrainerControl(), state=TrainerState(max_steps=10)),
                Checkpointer(tmp_path / f"rank-{rank}"),
            )
        )
    return out


def test_the_main_processs_changes_are_recorded_once_and_made_alike_on_another_rank(tmp_path):
    (lead, lead_ckpt), (follower, follower_ckpt) = handles(tmp_path)
    lead.save(lead_ckpt, 2)
    distributed.replay(lead.take_ops(), follower, follower_ckpt)
    for handle in (lead, follower):
        with torch.no_grad():
            handle.model.weight.add_(1.0)  # a step both ranks train alike
    lead.set("learning_rate", 9e-3)  # a push, then the loop's repair
    lead.restore(lead_ckpt, 5)
    lead.set("learning_rate", 3e-4)
    lead.extend(3)
    lead.pin(lead_ckpt, 2)
    lead.halt()
    ops = lead.take_ops()
    assert ops == [
        ("set", "learning_rate", 9e-3),
        ("restore", 2),
        ("set", "learning_rate", 3e-4),
        ("extend", 3),
        ("pin", 2),
        ("halt",),
    ]  # the restore's own LR re-set is not an op of its own
    distributed.replay(ops, follower, follower_ckpt)
    assert torch.equal(lead.model.weight, follower.model.weight) and follower.state.max_steps == 13
    assert follower.get("learning_rate") == pytest.approx(3e-4) and follower.control.should_training_stop
    assert follower_ckpt.pinned == 2
    with pytest.raises(RuntimeError, match="no valid checkpoint of step 4"):
        distributed.replay([("restore", 4)], follower, follower_ckpt)


def test_deepspeed_and_fsdp_are_refused_with_the_reason_and_ddp_is_not():
    class Args:
        deepspeed, fsdp = None, []

    assert distributed.unsupported_parallelism(Args()) is None
    Args.fsdp = ["full_shard"]
    assert "FSDP shards" in distributed.unsupported_parallelism(Args())
    Args.fsdp, Args.deepspeed = [], "ds_config.json"
    assert "DeepSpeed" in distributed.unsupported_parallelism(
        Args()
    ) and "alert-only" in distributed.unsupported_parallelism(Args())


def torchrun(out: Path, *extra: str) -> list[dict]:
    torchrun_bin = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun_bin,
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        str(ROOT / "scripts" / "ddp_user_run.py"),
        "--out",
        str(out),
        "--steps",
        "30",
        *extra,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_a_two_process_run_with_an_lr_spike_is_rolled_back_alike_on_both_ranks(tmp_path):
    ranks = torchrun(tmp_path / "spike", "--spike", "15", "--detector", "after-spike")
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["changes"] == ranks[1]["changes"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # the replicas never parted
    changes = [op for _, ops in ranks[0]["changes"] for op in ops]
    restores = [op for op in changes if op[0] == "restore"]
    assert restores and restores[0][1] < 15 and ["set", "learning_rate", 0.0003] in changes
    assert all(r["global_step"] == r["max_steps"] > 30 for r in ranks)  # completed, replays included


@pytest.mark.slow
def test_a_two_process_run_without_a_fault_gets_no_action(tmp_path):
    ranks = torchrun(tmp_path / "clean")
    assert ranks[0]["changes"] == ranks[1]["changes"] and ranks[0]["weights"] == ranks[1]["weights"]
    assert all(op[0] in ("save", "pin") for _, ops in ranks[0]["changes"] for op in ops)  # checkpoints only
    assert ranks[0]["summary"]["interventions"] == 0 and all(r["global_step"] == 30 for r in ranks)
