"""The closed loop in a run on several processes (``torchrun`` / ``accelerate launch``, DDP).

The callback runs on every rank. The main process decides: it alone runs the detector, diagnoser and
remediation policy, through a :class:`RecordingHandle` that writes down every change it makes to its
trainer. After each training log the main process broadcasts those changes and every other rank makes
the same ones on its own trainer (:func:`replay`), at the same step: a checkpoint (each rank saves and
restores its own weights, optimiser, scheduler and RNG state), a rollback to the same checkpoint step, a
knob, an extension of the run, a batch replay, a halt. Then every rank says whether it managed; if one
did not, every rank stops (replicas that differ would train on silently). Written here because neither
transformers nor accelerate has a "make this change on every rank" primitive beyond the collectives.

Supported: DDP (each rank holds the full model and optimiser state), on CPU (gloo) or GPU. Refused (the
loop runs alert-only, with a message): DeepSpeed and FSDP, whose sharded parameters and optimiser state
the loop cannot checkpoint and restore through ``state_dict`` on one rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from rftfm.fm.checkpoint import Checkpointer, CheckpointInfo
from rftfm.fm.handle import TrainerHandle

Op = tuple[Any, ...]


def process_rank(args: Any = None) -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed when initialised, else the trainer's arguments."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(getattr(args, "process_index", 0) or 0), int(getattr(args, "world_size", 1) or 1)


def unsupported_parallelism(args: Any = None, trainer: Any = None) -> str | None:
    """Why the loop cannot roll this run back (``None``: it can): DeepSpeed or FSDP shard the state."""
    deepspeed = (
        getattr(trainer, "is_deepspeed_enabled", False)
        or getattr(args, "deepspeed", None)
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    )
    fsdp = (
        getattr(trainer, "is_fsdp_enabled", False)
        or getattr(args, "fsdp", None)
        or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    )
    name = "DeepSpeed" if deepspeed else "FSDP" if fsdp else None
    if name is None:
        return None
    return (
        f"{name} shards parameters / optimiser state across processes, which the loop cannot checkpoint and "
        f"restore on its own: it runs alert-only (it detects, diagnoses and records, but never acts). "
        f"Rollback is supported for single-process and DDP runs."
    )


class RecordingHandle(TrainerHandle):
    """The main process's handle: each change it makes to the trainer is also written down as an op."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ops: list[Op] = []
        self._depth = 0  # only top-level calls are ops (a restore re-sets the LR itself on every rank)

    def _recorded(self, call: Callable[[], Any], op: Callable[[Any], Op]) -> Any:
        self._depth += 1
        try:
            out = call()
        finally:
            self._depth -= 1
        if self._depth == 0:
            self.ops.append(op(out))
        return out

    def take_ops(self) -> list[Op]:
        ops, self.ops = self.ops, []
        return ops

    def set(self, name: str, value: Any) -> None:
        self._recorded(lambda: super(RecordingHandle, self).set(name, value), lambda _: ("set", name, value))

    def halt(self) -> None:
        self._recorded(super().halt, lambda _: ("halt",))

    def extend(self, steps: int) -> int:
        return self._recorded(lambda: super(RecordingHandle, self).extend(steps), lambda added: ("extend", added))

    def rewind_data(self, steps: int) -> int:
        return self._recorded(lambda: super(RecordingHandle, self).rewind_data(steps), lambda _: ("rewind_data", steps))

    def switch_backup(self, kind: str) -> None:
        self._recorded(lambda: super(RecordingHandle, self).switch_backup(kind), lambda _: ("switch_backup", kind))

    def save(self, checkpointer: Checkpointer, step: int) -> CheckpointInfo:
        return self._recorded(lambda: super(RecordingHandle, self).save(checkpointer, step), lambda _: ("save", step))

    def restore(self, checkpointer: Checkpointer, before_step: int) -> tuple[CheckpointInfo, list[str]]:
        return self._recorded(
            lambda: super(RecordingHandle, self).restore(checkpointer, before_step),
            lambda out: ("restore", out[0].step),
        )

    def pin(self, checkpointer: Checkpointer, step: int | None) -> None:
        self._recorded(lambda: super(RecordingHandle, self).pin(checkpointer, step), lambda _: ("pin", step))


def replay(ops: list[Op], handle: TrainerHandle, checkpointer: Checkpointer) -> None:
    """Make the main process's changes on this rank's trainer, in order (raises when one fails)."""
    for name, *args in ops:
        if name == "save":
            handle.save(checkpointer, args[0])
        elif name == "restore":
            info, _ = handle.restore(checkpointer, args[0])
            if info.step != args[0]:
                raise RuntimeError(f"this rank has no valid checkpoint of step {args[0]} (restored step {info.step})")
        elif name == "pin":
            handle.pin(checkpointer, args[0])
        elif name == "set":
            handle.set(args[0], args[1])
        elif name == "halt":
            handle.halt()
        elif name == "extend":
            handle.extend(args[0])
        elif name == "rewind_data":
            handle.rewind_data(args[0])
        elif name == "switch_backup":
            handle.switch_backup(args[0])
        else:
            raise ValueError(f"unknown op {name!r}")


def broadcast(value: Any) -> Any:
    """``value`` of the main process, on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_ranks_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
