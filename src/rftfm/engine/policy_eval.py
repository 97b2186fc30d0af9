"""Greedy evaluation of a policy on a task group's fixed held-out prompts (strict verifier)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from rftfm.engine.tasks import Problem, TaskGroup
from rftfm.engine.tokenizer import build_tokenizer

EVAL_MAX_NEW_TOKENS = 10


@torch.no_grad()
def greedy_completions(model: PreTrainedModel, prompts: list[str],
                       max_new_tokens: int = EVAL_MAX_NEW_TOKENS) -> list[str]:
    tok = build_tokenizer()
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    was_training = model.training
    model.eval()
    out = model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if was_training:
        model.train()
    return tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def eval_accuracy(model: PreTrainedModel, task: TaskGroup, problems: list[Problem]) -> float:
    """Fraction of held-out problems solved exactly (tool calls run on the clean calculator)."""
    completions = greedy_completions(model, [p.prompt for p in problems])
    return sum(task.verify(c, p).correct for c, p in zip(completions, problems)) / len(problems)
