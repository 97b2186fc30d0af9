"""Periodic training checkpoints for rollback: model, optimiser, scheduler, RNG, knob values.

Layout of one checkpoint (a directory ``ckpt-<step>``):

* ``model.safetensors`` -- the model weights (``safetensors.torch.save_model``: handles tied weights);
* ``state.pt`` -- optimiser, scheduler and RNG states (``torch.save``; loaded with
  ``torch.load(weights_only=True)``, so no pickle code runs);
* ``meta.json`` -- step, trainer knob values and the checksums (XXH3-128) of the two files above.

A checkpoint is written into a temporary directory and moved into place with
``os.replace`` (atomic on one filesystem); a checkpoint whose files are missing, truncated
or do not match their checksum is skipped and the previous one is used. Files are not flushed to
the disk (``fsync``) unless ``durable=True``: the checkpoints serve rollbacks within the live
process, which a machine crash ends too, and a checkpoint damaged anyway fails its checksum; the
flush makes a small model's checkpoint 1.3-1.6 times as costly (``benchmarks/checkpoint_cost.py``). The checksum
guards against accidental damage (a truncated or altered file), not against an attacker (loading with
``weights_only`` does that), so it is XXH3-128 (``xxhash``), about four times as fast as SHA-256. Only the last
``keep`` checkpoints are kept, plus one the caller pinned (:meth:`Checkpointer.pin`: e.g. the last
checkpoint before a configuration change, which a rollback may need long after it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from xxhash import xxh3_128

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
PREFIX = "ckpt-"
CHECKSUM = "xxh3_128"  # meta.json's key of the files' checksums


class CheckpointError(RuntimeError):
    """No usable checkpoint."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    knobs: dict[str, Any]


def file_checksum(path: Path) -> str:
    """XXH3-128 of a file, in hex."""
    digest = xxh3_128()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Torch, NumPy and Python RNG states, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class Checkpointer:
    """Writes and restores checkpoints under ``root``; keeps the newest ``keep``."""

    def __init__(self, root: str | Path | None = None, keep: int = 4, durable: bool = False):
        self.durable = durable
        self._owned_tmp = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="rftfm-ckpt-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.pinned: int | None = None
        self.save_seconds = 0.0  # wall time spent writing checkpoints (what the end-of-run cost reports)

    # --- writing ----------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: Any = None,
        scheduler: Any = None,
        knobs: dict[str, Any] | None = None,
    ) -> CheckpointInfo:
        start = time.perf_counter()
        final = self.root / f"{PREFIX}{step:07d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            save_model(model, str(tmp / MODEL_FILE))
            state = {
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
            }
            torch.save(state, tmp / STATE_FILE)
            meta = {
                "step": step,
                "knobs": _jsonable(knobs or {}),
                CHECKSUM: {name: file_checksum(tmp / name) for name in (MODEL_FILE, STATE_FILE)},
            }
            (tmp / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
            if self.durable:
                for name in (MODEL_FILE, STATE_FILE, META_FILE):
                    with open(tmp / name, "rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        self.save_seconds += time.perf_counter() - start
        return CheckpointInfo(step, final, meta["knobs"])

    def pin(self, step: int | None) -> None:
        """Keep the checkpoint of ``step`` through pruning (``None``: unpin); one pin at a time."""
        self.pinned = step

    def _prune(self) -> None:
        for path in self._paths()[: -self.keep]:
            if self.pinned is None or path.name != f"{PREFIX}{self.pinned:07d}":
                shutil.rmtree(path, ignore_errors=True)

    # --- reading ----------------------------------------------------------------------------
    def _paths(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PREFIX}*") if p.is_dir())

    def steps(self) -> list[int]:
        return [int(p.name.removeprefix(PREFIX)) for p in self._paths()]

    def verify(self, path: Path) -> dict[str, Any]:
        """Meta of a valid checkpoint; raises :class:`CheckpointError` when it is damaged."""
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            for name, digest in meta[CHECKSUM].items():
                if file_checksum(path / name) != digest:
                    raise CheckpointError(f"{path / name}: checksum mismatch")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        return meta

    def latest_valid(self, before_step: int | None = None) -> tuple[CheckpointInfo | None, list[str]]:
        """The newest verified checkpoint with step <= ``before_step``; and the damaged ones skipped."""
        skipped: list[str] = []
        for path in reversed(self._paths()):
            step = int(path.name.removeprefix(PREFIX))
            if before_step is not None and step > before_step:
                continue
            try:
                meta = self.verify(path)
            except CheckpointError as exc:
                skipped.append(str(exc))
                continue
            return CheckpointInfo(step, path, meta.get("knobs", {})), skipped
        return None, skipped

    def restore(
        self, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None, before_step: int | None = None
    ) -> tuple[CheckpointInfo, list[str]]:
        """Load the newest valid checkpoint (step <= ``before_step``) into the live objects in place.

        Returns the checkpoint used and messages about damaged checkpoints that were skipped.
        """
        info, skipped = self.latest_valid(before_step)
        while info is not None:
            try:
                state = torch.load(info.path / STATE_FILE, weights_only=True)
                load_model(model, str(info.path / MODEL_FILE))
            except Exception as exc:  # damaged despite the checksum (e.g. changed after verify)
                skipped.append(f"{info.path}: {exc}")
                info, more = self.latest_valid(info.step - 1)
                skipped += more
                continue
            if optimizer is not None and state.get("optimizer") is not None:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            return info, skipped
        raise CheckpointError(f"no valid checkpoint at or before step {before_step} in {self.root}; skipped: {skipped}")

    def restore_or_oldest(
        self, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None, before_step: int = 0
    ) -> tuple[CheckpointInfo, list[str]]:
        """:meth:`restore`; when the checkpoints that old were already pruned, the oldest one kept (the
        closest to the healthy state there is), with a message saying so among the skipped ones."""
        try:
            return self.restore(model, optimizer, scheduler, before_step=before_step)
        except CheckpointError:
            kept = self.steps()
            if not kept or kept[0] <= before_step:
                raise
            info, skipped = self.restore(model, optimizer, scheduler, before_step=kept[0])
            return info, [
                *skipped,
                f"no checkpoint kept at or before step {before_step}: restored the oldest, step {info.step}",
            ]

    def cleanup(self) -> None:
        """Remove the checkpoint directory if this object created it."""
        if self._owned_tmp:
            shutil.rmtree(self.root, ignore_errors=True)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif hasattr(value, "item"):
            out[key] = value.item()
        else:
            out[key] = str(value)
    return out
