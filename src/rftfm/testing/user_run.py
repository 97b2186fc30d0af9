"""A user's own TRL run, outside the benchmark: what the loop meets in the wild.

A plain TRL ``GRPOTrainer`` subclass (with :class:`~rftfm.integrations.batch_replay.BatchReplayMixin`)
trains a tiny Llama-style model -- a family and a task the benchmark does not contain -- to count
the a's in short strings of letters, from a short supervised warm start cached on disk. Nothing comes from the
benchmark engine: model, character tokenizer, task and reward are built here, locally (no hub download).
It learns in about 80 steps on the CPU. A fault is a process change, never a log change: an
:class:`LRSpike` callback multiplies the learning rate mid-run, as a configuration push would.

    trainer = user_trainer(tmp_dir, steps=80, seed=0, spike=LRSpike(onset=30, factor=30))
    RFTFMCallback.attach(trainer)
    trainer.train()
    accuracy(trainer.model)
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from rftfm.integrations.batch_replay import BatchReplayMixin

ALPHABET = "abc"
DIGITS = "0123456789"
PAD, EOS = "<pad>", "<eos>"
MIN_LEN, MAX_LEN = 4, 9
WARM_START_VERSION = 1
SFT_STEPS, SFT_BATCH, SFT_LR = 25, 64, 3e-3
TRAIN_SEED, EVAL_SEED = 11, 97  # prompt streams: the evaluation prompts are never trained on


def cache_dir() -> Path:
    return Path(os.environ.get("RFTFM_CACHE", Path.home() / ".cache" / "rftfm"))


@lru_cache(maxsize=1)
def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (the alphabet and ``=``), ``<pad>`` and ``<eos>``; left padding."""
    vocab = {PAD: 0, EOS: 1, **{ch: i + 2 for i, ch in enumerate(ALPHABET + DIGITS + "=")}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS)
    tokenizer.padding_side = "left"
    return tokenizer


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """A two-layer Llama (RoPE, RMSNorm, SwiGLU) of about 70k parameters."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


# --- the task --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    prompt: str  # "abcab="
    answer: str  # "2": how many times the string holds an "a"


def problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))
        out.append(Problem(word + "=", str(word.count("a"))))
    return out


def count_reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """The reward function: 1 for the right count, else 0."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def format_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """A shaping reward beside it: 1 for an answer of digits only."""
    return [float(c.strip().isdigit()) for c in completions]


class FlakyVerifier(TrainerCallback):
    """The counting reward turned into a verifier that, from step ``onset`` on, returns None for a random ``fraction``
    of completions (a time-out it swallows). Pass :attr:`reward` as the reward function and the object as a callback;
    it changes what the reward function returns, never the log."""

    def __init__(self, onset: int, fraction: float = 0.5, seed: int = 0):
        self.onset, self.fraction, self.active = onset, fraction, False
        self._rng = random.Random(seed)

    def reward(self, prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float | None]:
        scores = count_reward(prompts, completions, answer)
        return [None if self.active and self._rng.random() < self.fraction else s for s in scores]

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.onset


class NoisyVerifier(TrainerCallback):
    """The counting reward with zero-mean Gaussian noise of sd ``sd`` added to every score from step ``onset`` on (a
    judge sampled at a temperature, a verifier with a random component). Pass :attr:`reward` as the reward function
    and the object as a callback; it changes what the reward function returns, never the log."""

    def __init__(self, onset: int = 1, sd: float = 0.5, seed: int = 0):
        self.onset, self.sd, self.active = onset, sd, False
        self._rng = random.Random(seed)

    def reward(self, prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        scores = count_reward(prompts, completions, answer)
        return [s + self._rng.gauss(0.0, self.sd) if self.active else s for s in scores]

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.onset


def train_dataset(n: int = 4096, seed: int = TRAIN_SEED) -> Dataset:
    return Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems(n, seed)])


def eval_dataset(n: int = 64) -> Dataset:
    """Held-out prompts in TRL's format (a ``prompt`` column, the reward function's ``answer`` column): the
    first ``n`` of the evaluation stream."""
    return Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems(n, EVAL_SEED)])


@torch.no_grad()
def accuracy(model: Any, n: int = 256, batch: int = 128, offset: int = 0) -> float:
    """Greedy exact-match accuracy on ``n`` held-out prompts (the same prompts every call), from position
    ``offset`` of the evaluation stream (past the ones an eval callable sees, for a final score)."""
    tok = build_tokenizer()
    items = problems(offset + n, EVAL_SEED)[offset:]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, n, batch):
            chunk = items[i : i + batch]
            enc = tok([p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
            )
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            correct += sum(t.strip() == p.answer for t, p in zip(texts, chunk))
    finally:
        model.train(was_training)
    return correct / n


# --- the warm start ------------------------------------------------------------------------------
def _sft_batch(rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tok = build_tokenizer()
    items = problems(size, rng.randrange(1 << 30))
    seqs = [
        (
            tok(p.prompt, add_special_tokens=False)["input_ids"],
            tok(p.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
        )
        for p in items
    ]
    length = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((size, length), tok.pad_token_id)
    labels = torch.full((size, length), -100)
    mask = torch.zeros((size, length), dtype=torch.long)
    for i, (prompt, target) in enumerate(seqs):
        seq = prompt + target
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        labels[i, len(prompt) : len(seq)] = torch.tensor(target)
    return ids, mask, labels


def warm_start_path() -> Path:
    return cache_dir() / f"user-run-v{WARM_START_VERSION}"


def warm_start() -> Path:
    """The supervised warm start (partly competent, so RL has signal and room), trained and cached on
    first use (atomic write); a plain torch loop, since a few hundred tiny steps need no trainer."""
    path = warm_start_path()
    if not (path / "model.safetensors").exists():
        model = build_model()
        rng = random.Random(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.0)
        model.train()
        for _ in range(SFT_STEPS):
            ids, mask, labels = _sft_batch(rng, SFT_BATCH)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race; use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --- the trainer ----------------------------------------------------------------------------------
class UserTrainer(BatchReplayMixin, GRPOTrainer):
    """What a user writes: TRL's GRPOTrainer with rftfm's batch replay mixed in, nothing else."""


class LRSpike(TrainerCallback):
    """A mid-run learning-rate spike: from step ``onset`` on, the LR is ``factor`` times what it was
    (optimiser and scheduler alike, as a configuration push would set it). It changes the training
    process, not its logs; it acts once (a rollback that undoes it is not undone again)."""

    def __init__(self, onset: int, factor: float = 30.0):
        self.onset, self.factor, self.fired_at = onset, factor, None

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.fired_at is not None or state.global_step + 1 < self.onset or optimizer is None:
            return
        self.fired_at = state.global_step + 1
        for group in optimizer.param_groups:
            group["lr"] *= self.factor
        if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = [lr * self.factor for lr in lr_scheduler.base_lrs]


class KnobPush(TrainerCallback):
    """A configuration pushed mid-run: from step ``onset`` on, the trainer knob ``knob`` (:mod:`rftfm.knobs`, e.g.
    ``temperature`` or ``max_completion_length``) is ``value``, set through the same setter a user's own code (or a
    resume with an edited config) would reach. It changes the training process, not its logs; it acts once (a
    rollback that undoes it is not undone again). :func:`user_trainer` binds it to its trainer."""

    def __init__(self, onset: int, knob: str, value: Any):
        self.onset, self.knob, self.value, self.fired_at = onset, knob, value, None
        self.trainer: Any = None

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        if self.fired_at is not None or state.global_step + 1 < self.onset or self.trainer is None:
            return
        from rftfm.knobs import set_knob

        self.fired_at = state.global_step + 1
        set_knob(self.trainer, self.knob, self.value)


class AdvantageSignBug(TrainerCallback):
    """A sign bug in TRL's advantage normalisation from step ``onset`` on: the standard deviation it divides by
    comes out negated, so every group's advantages flip (those TRL logs are the ones it trains on). It changes the
    training process, not its logs; ``on_train_end`` puts TRL's helper back."""

    def __init__(self, onset: int):
        self.onset, self.active = onset, False
        self._honest: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        import trl.trainer.grpo_trainer as grpo

        self._honest = honest = grpo.nanstd

        def nanstd(*a: Any, **k: Any) -> Any:
            return -honest(*a, **k) if self.active else honest(*a, **k)

        grpo.nanstd = nanstd

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 >= self.onset

    def on_train_end(self, args, state, control, **kwargs):
        import trl.trainer.grpo_trainer as grpo

        if self._honest is not None:
            grpo.nanstd = self._honest


#: TRL's ``GRPOConfig`` defaults for how a run logs and schedules its learning rate (the harness otherwise logs every
#: step at a constant rate): a record every 10 steps, averaged over them, and a linear decay to 0
TRL_DEFAULT_LOGGING: dict[str, Any] = {"logging_steps": 10, "lr_scheduler_type": "linear"}


def user_config(
    out_dir: str | Path,
    *,
    steps: int | None = 80,
    epochs: float | None = None,
    seed: int = 0,
    learning_rate: float = 3e-4,
    logging_steps: int = 1,
    gradient_accumulation_steps: int = 1,
    warmup_steps: int = 0,
    beta: float = 0.0,
    **overrides: Any,
) -> GRPOConfig:
    """The run's TRL configuration: ``steps`` optimiser steps, or ``epochs`` passes over the data
    (``steps=None``); 4 prompts x 8 completions per step."""
    batch = 32 // max(gradient_accumulation_steps, 1)
    kwargs: dict[str, Any] = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch,
        num_generations=8,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant_with_warmup" if warmup_steps else "constant",
        warmup_steps=warmup_steps,
        max_completion_length=3,
        temperature=1.0,
        beta=beta,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch.float32},
    )
    if steps is not None:
        kwargs["max_steps"] = steps
    else:
        kwargs["num_train_epochs"] = epochs or 1.0
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def user_trainer(
    out_dir: str | Path,
    *,
    steps: int | None = 80,
    seed: int = 0,
    spike: TrainerCallback | None = None,
    callbacks: Iterable[TrainerCallback] = (),
    prompts: int | None = None,
    eval_prompts: int = 0,
    log_path: str | Path | None = None,
    trainer_cls: type = UserTrainer,
    reward_funcs: Iterable[Any] = (count_reward,),
    **config: Any,
) -> GRPOTrainer:
    """A plain TRL GRPO run of the counting task from the cached warm start.

    ``prompts``: size of the training set (default: room for the planned steps and half as many again,
    so rollbacks can replay); ``eval_prompts``: held-out prompts as TRL's ``eval_dataset`` (the trainer
    never evaluates by itself; :class:`~rftfm.integrations.trl_eval.RewardEval` can); ``log_path``: also log
    every step as JSON lines (:class:`~rftfm.integrations.trl_log.JsonlLogCallback`), as a user would for
    ``rftfm watch``; ``reward_funcs``: TRL's (with ``reward_weights`` among ``config``).
    """
    from rftfm.integrations.trl_log import JsonlLogCallback

    args = user_config(out_dir, steps=steps, seed=seed, **config)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps // args.num_generations
    n = prompts if prompts is not None else per_step * int(1.5 * (steps or 64)) + per_step
    extra = [cb for cb in (spike, JsonlLogCallback(log_path) if log_path else None) if cb is not None]
    trainer = trainer_cls(
        model=str(warm_start()),
        args=args,
        reward_funcs=list(reward_funcs),
        train_dataset=train_dataset(n),
        eval_dataset=eval_dataset(eval_prompts) if eval_prompts else None,
        processing_class=build_tokenizer(),
        callbacks=[*extra, *callbacks],
    )
    if isinstance(spike, KnobPush):
        spike.bind(trainer)
    return trainer
