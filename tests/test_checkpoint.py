"""Checkpoints restore model, optimiser, scheduler and RNG exactly; damaged ones are skipped."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rftfm.fm.checkpoint import CHECKSUM, META_FILE, MODEL_FILE, STATE_FILE, Checkpointer, CheckpointError


class Tied(torch.nn.Module):
    """A small model with tied weights, like GPT-2's embedding and LM head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.mid = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.emb(x))))


def make():
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train_step(model, opt, sched) -> None:
    x = torch.randint(0, 11, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), (x + 1) % 11)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def snapshot(model, opt, sched):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        opt.state_dict()["state"][0]["exp_avg"].clone(),
        sched.state_dict()["last_epoch"],
        opt.param_groups[0]["lr"],
    )


def test_restore_is_exact_including_rng(tmp_path):
    model, opt, sched = make()
    ck = Checkpointer(tmp_path, keep=3)
    for _ in range(3):
        train_step(model, opt, sched)
    ck.save(3, model, opt, sched, knobs={"learning_rate": opt.param_groups[0]["lr"], "loss_type": "grpo"})
    saved = snapshot(model, opt, sched)
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    for _ in range(4):
        train_step(model, opt, sched)
    info, skipped = ck.restore(model, opt, sched)
    assert info.step == 3 and skipped == [] and info.knobs["loss_type"] == "grpo"
    now = snapshot(model, opt, sched)
    for k in saved[0]:
        assert torch.equal(saved[0][k], now[0][k]), k
    assert torch.equal(saved[1], now[1]) and saved[2] == now[2] and saved[3] == pytest.approx(now[3])
    assert model.head.weight.data_ptr() == model.emb.weight.data_ptr()  # tying survives
    assert torch.equal(draws[0], torch.rand(3)) and np.allclose(draws[1], np.random.rand(3))
    assert draws[2] == [random.random() for _ in range(3)]
    # the optimiser still drives the live parameters after the restore
    before = model.mid.weight.clone()
    train_step(model, opt, sched)
    assert not torch.equal(before, model.mid.weight)


def test_state_file_loads_with_weights_only(tmp_path):
    model, opt, sched = make()
    train_step(model, opt, sched)
    checkpointer = Checkpointer(tmp_path)
    info = checkpointer.save(1, model, opt, sched)
    assert checkpointer.save_seconds > 0  # what the end-of-run cost reports
    state = torch.load(info.path / STATE_FILE, weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng"}
    meta = json.loads((info.path / META_FILE).read_text())
    assert set(meta[CHECKSUM]) == {MODEL_FILE, STATE_FILE}


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_meta"])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, damage):
    model, opt, sched = make()
    ck = Checkpointer(tmp_path, keep=3)
    train_step(model, opt, sched)
    ck.save(1, model, opt, sched)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, opt, sched)
    latest = ck.save(2, model, opt, sched)
    target = latest.path / MODEL_FILE
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-5] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:40])
    else:
        (latest.path / META_FILE).unlink()
    info, skipped = ck.restore(model, opt, sched)
    assert info.step == 1 and len(skipped) == 1 and "ckpt-0000002" in skipped[0]
    assert all(torch.equal(good[k], v) for k, v in model.state_dict().items())


def test_keep_last_n_before_step_and_no_valid_checkpoint(tmp_path):
    model, opt, sched = make()
    ck = Checkpointer(tmp_path, keep=2)
    for step in range(1, 5):
        train_step(model, opt, sched)
        ck.save(step, model, opt, sched)
    assert ck.steps() == [3, 4]
    assert not list(tmp_path.glob(".tmp-*"))  # atomic writes leave no temporary directories
    assert ck.restore(model, opt, sched, before_step=3)[0].step == 3
    with pytest.raises(CheckpointError):
        ck.restore(model, opt, sched, before_step=2)


def test_a_pinned_checkpoint_survives_pruning(tmp_path):
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, keep=2)
    for step in range(1, 4):
        ck.save(step, model)
    ck.pin(2)
    for step in range(4, 8):
        ck.save(step, model)
    assert ck.steps() == [2, 6, 7]
    ck.pin(None)
    ck.save(8, model)
    assert ck.steps() == [7, 8]


def test_files_reach_the_disk_only_when_durable(tmp_path, monkeypatch):
    import rftfm.fm.checkpoint as checkpoint

    flushed = []
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: flushed.append(fd))
    model, opt, sched = make()
    Checkpointer(tmp_path / "fast").save(1, model, opt, sched)
    assert flushed == []
    durable = Checkpointer(tmp_path / "durable", durable=True)
    durable.save(1, model, opt, sched)
    assert len(flushed) == 3 and durable.latest_valid()[0].step == 1
