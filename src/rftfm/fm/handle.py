"""``TrainerHandle``: everything the closed loop may do to a live trainer, and nothing else.

The loop reads and turns the trainer's knobs (:mod:`rftfm.knobs`), restores checkpoints into
its model / optimiser / scheduler, extends its planned length, replays discarded batches, stops it,
and switches to a backup verifier or tool the user registered. It never reaches anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rftfm.fm.checkpoint import Checkpointer, CheckpointInfo
from rftfm.fm.remediate import Capabilities
from rftfm.fm.types import Action
from rftfm.knobs import KNOBS, configured_lr, get_knob, set_knob


class TrainerHandle:
    """Everything the loop may do to a live trainer, and nothing else.

    Built from a full trainer object (all :data:`~rftfm.knobs.KNOBS` it supports), or
    from the ``model`` / ``optimizer`` / ``lr_scheduler`` / ``control`` a TRL callback receives
    (then only the learning rate, rollback and halt are available).
    """

    def __init__(
        self,
        trainer: Any = None,
        *,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        control: Any = None,
        state: Any = None,
        backup_verifier: Callable[..., list[float]] | None = None,
        backup_tool: Callable[..., Any] | None = None,
    ):
        self.trainer = trainer
        self._model, self._optimizer, self._scheduler, self.control = model, optimizer, scheduler, control
        self._state = state
        self.backup_verifier, self.backup_tool = backup_verifier, backup_tool

    @property
    def model(self) -> Any:
        return self.trainer.model if self.trainer is not None else self._model

    @property
    def optimizer(self) -> Any:
        return getattr(self.trainer, "optimizer", None) if self.trainer is not None else self._optimizer

    @property
    def scheduler(self) -> Any:
        return getattr(self.trainer, "lr_scheduler", None) if self.trainer is not None else self._scheduler

    @property
    def state(self) -> Any:
        return getattr(self.trainer, "state", None) if self.trainer is not None else self._state

    def update(
        self, model: Any = None, optimizer: Any = None, scheduler: Any = None, control: Any = None, state: Any = None
    ) -> None:
        self._model = model if model is not None else self._model
        self._optimizer = optimizer if optimizer is not None else self._optimizer
        self._scheduler = scheduler if scheduler is not None else self._scheduler
        self.control = control if control is not None else self.control
        self._state = state if state is not None else self._state

    def extend(self, steps: int) -> int:
        """Train ``steps`` more optimiser steps than planned (the trainer's ``max_steps``), as a resume
        from a checkpoint does: the steps a rollback discarded are trained again. Returns the steps
        added (0 when the trainer's state is out of reach). The trainer stops early anyway when its
        data runs out."""
        state = self.state
        if steps <= 0 or state is None or not isinstance(getattr(state, "max_steps", None), int):
            return 0
        state.max_steps += steps
        return steps

    def rewind_data(self, steps: int) -> int:
        """Feed the prompt batches of the last ``steps`` steps again before new ones, as a resume from
        a checkpoint does (the embedded engine's ``replay_last_batches``). Returns the batches queued:
        0 for a trainer that cannot (it goes on with its next batches)."""
        replay = getattr(self.trainer, "replay_last_batches", None)
        return int(replay(steps)) if callable(replay) and steps > 0 else 0

    def knob_names(self) -> list[str]:
        return list(self.knobs())

    def capabilities(self) -> Capabilities:
        backups = {k for k, v in (("verifier", self.backup_verifier), ("tool", self.backup_tool)) if v is not None}
        if "tool" in backups and not hasattr(self.trainer, "tool"):
            backups.discard("tool")  # the trainer exposes no tool slot to switch
        return Capabilities(
            knobs=frozenset(self.knob_names()),
            rollback=self.model is not None,
            halt=self.control is not None or self.trainer is not None,
            backups=frozenset(backups),
        )

    def knobs(self) -> dict[str, Any]:
        """Every knob this trainer can read and set, with its value (one pass: the loop reads them each step)."""
        if self.trainer is None:
            return {"learning_rate": self.get("learning_rate")} if self._optimizer is not None else {}
        values: dict[str, Any] = {}
        for name in KNOBS:
            if name == "beta" and getattr(self.trainer, "ref_model", None) is None:
                continue  # beta > 0 needs a reference model this trainer does not have
            try:
                values[name] = self.get(name)
            except Exception:
                continue
        return values

    def get(self, name: str) -> Any:
        if name == "learning_rate" and self.optimizer is not None:  # the schedule's peak, not the LR of this step
            return configured_lr(self.optimizer, getattr(self.scheduler, "scheduler", self.scheduler))
        if self.trainer is not None:
            return get_knob(self.trainer, name)
        raise KeyError(f"knob {name!r} is not available on this trainer")

    def set(self, name: str, value: Any) -> None:
        if name == "learning_rate" and self.optimizer is not None:
            self._set_learning_rate(float(value))
        elif self.trainer is not None:
            set_knob(self.trainer, name, value)
        else:
            raise KeyError(f"knob {name!r} is not available on this trainer")

    def _set_learning_rate(self, value: float) -> None:
        """Set the configured (peak) LR: the scheduler's base LR, and the LR in use where the schedule stands
        now, so that a warm-up or decay goes on from there (a constant schedule just takes ``value``). For a
        ``LambdaLR`` (every transformers schedule) the LR in use is computed as the scheduler computes it."""
        optimizer, scheduler = self.optimizer, self.scheduler
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the scheduler
        base = configured_lr(optimizer, inner)
        if isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
            inner.base_lrs = [value for _ in inner.base_lrs]
            for group, lmbda in zip(optimizer.param_groups, inner.lr_lambdas):
                group["lr"] = value * lmbda(inner.last_epoch)
        else:
            for group in optimizer.param_groups:
                scaled = base is not None and base > 0 and group["lr"] != base
                group["lr"] = group["lr"] * value / base if scaled else value  # type: ignore[operator]
            if inner is not None and hasattr(inner, "base_lrs"):
                inner.base_lrs = [value for _ in inner.base_lrs]
        if self.trainer is not None and hasattr(getattr(self.trainer, "args", None), "learning_rate"):
            self.trainer.args.learning_rate = value

    def halt(self) -> None:
        control = self.control if self.control is not None else getattr(self.trainer, "control", None)
        if control is None:
            raise RuntimeError("this trainer exposes no control object to stop it")
        control.should_training_stop = True

    def switch_backup(self, kind: str) -> None:
        if kind == "verifier" and self.backup_verifier is not None:
            funcs = getattr(self.trainer, "reward_funcs", None)
            if not funcs:
                raise RuntimeError("trainer has no reward_funcs to switch")
            funcs[0] = self.backup_verifier
        elif kind == "tool" and self.backup_tool is not None:
            self.trainer.tool = self.backup_tool
        else:
            raise RuntimeError(f"no backup {kind} registered")

    def save(self, checkpointer: Checkpointer, step: int) -> CheckpointInfo:
        """Checkpoint the trainer's model, optimiser, scheduler, RNG and knob values as step ``step``."""
        return checkpointer.save(step, self.model, self.optimizer, self.scheduler, self.knobs())

    def pin(self, checkpointer: Checkpointer, step: int | None) -> None:
        """Keep the checkpoint of ``step`` through pruning (a rollback may want it long after)."""
        checkpointer.pin(step)

    def restore(self, checkpointer: Checkpointer, before_step: int) -> tuple[CheckpointInfo, list[str]]:
        """Load the newest valid checkpoint at or before ``before_step`` into the trainer (the oldest one
        kept when those were pruned); the learning-rate knob stays as it is (the optimiser state carries one)."""
        knobs_now = self.knobs()
        info, skipped = checkpointer.restore_or_oldest(self.model, self.optimizer, self.scheduler, before_step)
        if "learning_rate" in knobs_now and self.get("learning_rate") != knobs_now["learning_rate"]:
            self.set("learning_rate", knobs_now["learning_rate"])
        return info, skipped

    def apply(self, action: Action) -> str:
        """Carry out a knob change, a halt or a backup switch; returns what was done, in words."""
        if action.kind == "set_knob" and action.knob is not None:
            self.set(action.knob, action.value)
            return f"{_fmt(action.previous)} -> {_fmt(action.value)}"
        if action.kind == "halt":
            self.halt()
            return "stop requested"
        if action.kind.startswith("backup_"):
            self.switch_backup(action.kind.removeprefix("backup_"))
            return "switched"
        raise ValueError(f"unknown action kind {action.kind!r}")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
