"""Short supervised warm start, cached on disk so reinforcement learning starts with signal.

A plain torch loop: the sequences are a few characters long and the whole job is a
few hundred tiny steps, so TRL's SFTTrainer machinery would cost more than the training.

The published benchmark's six (task group, GPT-2 size) pairs train a fixed number of steps
(:data:`SFT_STEPS`). Every other (task group, family, size) trains until the greedy held-out
accuracy first reaches :data:`SFT_TARGET_ACCURACY` (checked every :data:`SFT_CHECK_EVERY` steps,
at most :data:`SFT_MAX_STEPS`), so every warm start is partially competent and RL has room to
learn, whatever the task's difficulty and the model's capacity.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from rftfm.engine.model import DEFAULT_FAMILY, build_model
from rftfm.engine.policy_eval import eval_accuracy
from rftfm.engine.tasks import task_group
from rftfm.engine.tokenizer import build_tokenizer

SFT_VERSION = 1
#: SFT steps per (task group, model size), chosen so the warm start is partially competent
#: (RL has room to learn); measured warm-start accuracies are in docs/engine.md.
SFT_STEPS: dict[tuple[str, str], int] = {
    ("arith_a", "xs"): 120, ("arith_a", "s"): 350,
    ("arith_b", "xs"): 250, ("arith_b", "s"): 350,
    ("tool", "xs"): 250, ("tool", "s"): 250,
}
SFT_BATCH = 64
SFT_LR = 3e-3
#: the larger sizes diverge at 3e-3 (measured: GPT-2 ``l`` stays below 10 % held-out accuracy after
#: 300 steps at 3e-3, and passes 70 % at 1e-3 after 150)
SFT_LR_BY_SIZE = {"m": 1e-3, "l": 1e-3}
SFT_TARGET_ACCURACY = 0.25
SFT_CHECK_EVERY = 25
SFT_MAX_STEPS = 1000


def cache_dir() -> Path:
    return Path(os.environ.get("RFTFM_CACHE", Path.home() / ".cache" / "rftfm"))


def sft_batch(task_name: str, rng: random.Random, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    task, tok = task_group(task_name), build_tokenizer()
    problems = [task.sample(rng) for _ in range(batch_size)]
    prompts = [tok(p.prompt)["input_ids"] for p in problems]
    targets = [tok(task.sft_completion(p, rng))["input_ids"] + [tok.eos_token_id] for p in problems]
    length = max(len(p) + len(t) for p, t in zip(prompts, targets))
    ids = torch.full((batch_size, length), tok.pad_token_id)
    labels = torch.full((batch_size, length), -100)
    mask = torch.zeros((batch_size, length), dtype=torch.long)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(t)
    return ids, mask, labels


def train_sft(task_name: str, size: str, steps: int | None = None, seed: int = 0,
              family: str = DEFAULT_FAMILY) -> tuple[PreTrainedModel, int]:
    """The warm start and the steps it trained: ``steps`` if given, else :data:`SFT_STEPS` or until the
    accuracy target."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_model(size, family)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR_BY_SIZE.get(size, SFT_LR), weight_decay=0.0)
    model.train()
    fixed = steps if steps is not None else SFT_STEPS.get((task_name, size)) if family == DEFAULT_FAMILY else None
    task = task_group(task_name)
    eval_set = task.eval_problems()
    step = 0
    for step in range(1, (fixed or SFT_MAX_STEPS) + 1):
        ids, mask, labels = sft_batch(task_name, rng, SFT_BATCH)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if fixed is None and step % SFT_CHECK_EVERY == 0:
            if eval_accuracy(model, task, eval_set) >= SFT_TARGET_ACCURACY:
                break
    return model, step


def warm_start_path(task_name: str, size: str, family: str = DEFAULT_FAMILY) -> Path:
    name = f"{task_name}-{size}" if family == DEFAULT_FAMILY else f"{family}-{task_name}-{size}"
    return cache_dir() / f"sft-v{SFT_VERSION}" / name


def load_warm_start(task_name: str, size: str, family: str = DEFAULT_FAMILY) -> PreTrainedModel:
    """The cached SFT policy for (task, size, family), trained and cached on first use (atomic write)."""
    path = warm_start_path(task_name, size, family)
    if not (path / "model.safetensors").exists():
        start = time.process_time()
        model, steps = train_sft(task_name, size, family=family)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        model.save_pretrained(tmp, safe_serialization=True)
        task = task_group(task_name)
        info = {"steps": steps, "cpu_s": round(time.process_time() - start, 1),
                "accuracy": eval_accuracy(model, task, task.eval_problems())}
        (tmp / "sft_info.json").write_text(json.dumps(info), encoding="utf-8")
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
