"""Run one RFT training run of the embedded engine (TRL GRPO on the CPU) from a ``RunInfo``, with its fault injected."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback, set_seed
from trl import GRPOConfig

from rftfm.engine.hooks import Injector
from rftfm.engine.sft import load_warm_start, warm_start_path
from rftfm.engine.tasks import TaskGroup, task_group
from rftfm.engine.tokenizer import build_tokenizer
from rftfm.engine.trainer import RecordingGRPOTrainer, StepSink
from rftfm.faults.injectors import make_injector
from rftfm.records import RunInfo

#: Clean training configuration of the embedded engine (what a careful user would set): the published
#: benchmark's configuration, which every run not drawn from the configuration space keeps.
DEFAULTS: dict[str, Any] = {
    "num_steps": 28,
    "prompts_per_step": 8,
    "num_generations": 8,
    "learning_rate": 3e-4,
    "beta": 0.04,
    "temperature": 1.0,
    "max_completion_length": 10,
    "eval_every": 1,
    "model_family": "gpt2",
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "loss_type": "dapo",  # TRL's default
    "scale_rewards": "group",
    "epsilon": 0.2,
    "epsilon_high": 0.2,
    "logging_steps": 1,
}
#: Spare prompts beyond the planned run, as a fraction of its steps (room to replay rolled-back steps).
SPARE_STEPS_FRACTION = 1.0


def quiet() -> None:
    """Silence library chatter that would drown the CLI's own output."""
    for name in ("transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def with_defaults(info: RunInfo) -> RunInfo:
    """Fill unset configuration fields of ``info`` from :data:`DEFAULTS`."""
    update = {k: v for k, v in DEFAULTS.items() if getattr(info, k) is None}
    return info.model_copy(update=update)


def _prompt_dataset(info: RunInfo, task: TaskGroup, seed: int) -> tuple[Dataset, int]:
    """The run's prompts as a dataset, and how many of them the planned steps use."""
    planned = info.num_steps * info.prompts_per_step
    # spare prompts after the planned ones, for the data loader of a run extended after a rollback
    # (its discarded batches come again first, see BatchReplay, so the spares wait at the end of
    # the queue); a run that is never extended does not touch them
    problems = task.problems(planned + int(SPARE_STEPS_FRACTION * info.num_steps) * info.prompts_per_step, seed=seed)
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer, "prompt_id": p.prompt_id} for p in problems])
    return dataset, planned


def _warm_start_model_path(info: RunInfo) -> str:
    """Where the run's SFT starting policy is cached (trained first if it is not)."""
    size, family = info.model_size or "xs", info.model_family or "gpt2"
    load_warm_start(info.task_group, size, family)  # make sure the cache exists
    return str(warm_start_path(info.task_group, size, family))


def _grpo_config(info: RunInfo, task: TaskGroup, seed: int, output_dir: str | None) -> GRPOConfig:
    """TRL's GRPO arguments for the run: its configuration, deterministic and on the CPU."""
    return GRPOConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix="rftfm-run-"),
        per_device_train_batch_size=info.prompts_per_step * info.num_generations,
        gradient_accumulation_steps=1,
        num_generations=info.num_generations,
        max_steps=info.num_steps,
        learning_rate=info.learning_rate,
        lr_scheduler_type=info.lr_scheduler,
        warmup_steps=info.warmup_ratio,  # a float in [0, 1) is a ratio of the run's steps
        beta=info.beta,
        loss_type=info.loss_type,
        scale_rewards=info.scale_rewards,
        epsilon=info.epsilon,
        epsilon_high=info.epsilon_high,
        reward_weights=list(task.reward_weights) if task.reward_weights else None,
        temperature=info.temperature,
        max_completion_length=info.max_completion_length,
        # rollouts survive non-finite logits (a numerical blow-up) the way a serving engine does, instead
        # of crashing the run; with finite logits this changes nothing
        generation_kwargs={"remove_invalid_values": True},
        logging_steps=info.logging_steps,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        disable_tqdm=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        max_grad_norm=1.0,
        model_init_kwargs={"dtype": torch.float32},
    )


def _injector_for(info: RunInfo, seed: int) -> Injector:
    """The run's fault injector; a no-op one for a normal or control run."""
    if info.control_or_fault == "fault":
        return make_injector(info.fault_type, info.fault_strength, onset_step=info.onset_step or 1, seed=seed)
    return make_injector(None, None)


def build_trainer(
    info: RunInfo,
    sinks: list[StepSink] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    output_dir: str | None = None,
) -> RecordingGRPOTrainer:
    """A ready-to-train ``RecordingGRPOTrainer`` for ``info`` (fault injected as the run says)."""
    quiet()
    info = with_defaults(info)
    seed = info.seed or 0
    set_seed(seed)
    task = task_group(info.task_group)
    dataset, planned = _prompt_dataset(info, task, seed)
    model_path = _warm_start_model_path(info)
    config = _grpo_config(info, task, seed, output_dir)
    injector = _injector_for(info, seed)
    trainer = RecordingGRPOTrainer(
        model=model_path,
        args=config,
        train_dataset=dataset,
        processing_class=build_tokenizer(),
        callbacks=callbacks,
        run=info,
        task=task,
        injector=injector,
        sinks=list(sinks or []),
        eval_problems=task.eval_problems(),
        planned_prompts=planned,
    )
    trainer.remove_callback(PrinterCallback)  # records go to sinks, not stdout
    return trainer


def train_run(info: RunInfo, sinks: list[StepSink] | None = None,
              callbacks: list[TrainerCallback] | None = None) -> RecordingGRPOTrainer:
    """Train ``info`` to completion, streaming records to ``sinks``; returns the trainer."""
    with tempfile.TemporaryDirectory(prefix="rftfm-run-") as tmp:
        trainer = build_trainer(info, sinks, callbacks, output_dir=tmp)
        trainer.train()
    return trainer
