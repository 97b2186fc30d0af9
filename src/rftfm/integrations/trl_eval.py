"""A held-out evaluation for the closed loop, built from what a TRL user already has.

:class:`RewardEval` is an ``eval_fn(model) -> float``: greedy completions of a fixed set of held-out
prompts (TRL's ``eval_dataset``), scored by the trainer's own reward functions with their weights. It
returns the mean reward, or with ``threshold`` the share of prompts whose reward reaches it (an
accuracy in [0, 1], the scale of the loop's accuracy margins). Written here because TRL's own
``evaluate`` samples completions, syncs every process and logs; the loop needs a deterministic number
from the main process alone, without touching the training RNG.

    eval_fn = RewardEval.from_trainer(trainer, num_prompts=64, threshold=1.0)
    RFTFMCallback.attach(trainer, eval_fn=eval_fn, eval_every=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class RewardEval:
    """Mean (weighted) reward of greedy completions on fixed held-out prompts."""

    def __init__(
        self,
        prompts: Sequence[Any],
        columns: dict[str, list[Any]],
        reward_funcs: Sequence[Callable[..., Any]],
        tokenizer: Any,
        max_new_tokens: int,
        weights: Sequence[float] | None = None,
        threshold: float | None = None,
        batch_size: int = 32,
    ):
        for func in reward_funcs:
            if isinstance(func, torch.nn.Module) or not callable(func):
                raise TypeError(
                    "RewardEval scores with reward functions only; for a reward model pass your own eval_fn"
                )
        self.prompts, self.columns, self.reward_funcs = list(prompts), columns, list(reward_funcs)
        self.tokenizer, self.max_new_tokens, self.batch_size = tokenizer, max_new_tokens, batch_size
        self.weights = list(weights) if weights is not None else [1.0] * len(self.reward_funcs)
        self.threshold = threshold

    @classmethod
    def from_trainer(
        cls,
        trainer: Any,
        eval_dataset: Any = None,
        num_prompts: int = 64,
        threshold: float | None = None,
        batch_size: int = 32,
    ) -> "RewardEval":
        """From a ``GRPOTrainer``: its ``eval_dataset`` (or ``eval_dataset``), reward functions and weights,
        tokenizer and completion length; the first ``num_prompts`` prompts."""
        dataset = eval_dataset if eval_dataset is not None else getattr(trainer, "eval_dataset", None)
        if dataset is None:
            raise ValueError("no eval_dataset: pass one, or give the loop your own eval_fn")
        rows = dataset.select(range(min(num_prompts, len(dataset))))
        columns = {name: list(rows[name]) for name in rows.column_names if name != "prompt"}
        weights = getattr(trainer, "reward_weights", None)
        weights = [float(w) for w in weights] if weights is not None else None
        return cls(
            list(rows["prompt"]),
            columns,
            trainer.reward_funcs,
            trainer.processing_class,
            trainer.max_completion_length,
            weights,
            threshold,
            batch_size,
        )

    def __call__(self, model: Any) -> float:
        scores: list[float] = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):  # greedy, and the training RNG stays as it was
                for i in range(0, len(self.prompts), self.batch_size):
                    scores += self._score(model, slice(i, i + self.batch_size))
        finally:
            model.train(was_training)
        if self.threshold is not None:
            return sum(s >= self.threshold for s in scores) / max(len(scores), 1)
        return sum(scores) / max(len(scores), 1)

    def _score(self, model: Any, rows: slice) -> list[float]:
        prompts = self.prompts[rows]
        conversational = bool(prompts) and isinstance(prompts[0], list)
        texts = [
            self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if conversational else p
            for p in prompts
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out = model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        ids = out[:, enc["input_ids"].shape[1] :]
        completions = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        if conversational:
            completions = [[{"role": "assistant", "content": c}] for c in completions]  # type: ignore[misc]
        extra = {name: values[rows] for name, values in self.columns.items()}
        total = [0.0] * len(prompts)
        for func, weight in zip(self.reward_funcs, self.weights):
            rewards = func(prompts=prompts, completions=completions, completion_ids=ids.tolist(), **extra)
            total = [t + weight * (float(r) if r is not None else 0.0) for t, r in zip(total, rewards)]
        return total
