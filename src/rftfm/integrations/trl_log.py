"""A ``transformers.TrainerCallback`` that appends every ``on_log`` dict as one JSON line.

This is the one line a TRL user adds so that ``rftfm watch run.jsonl --format trl`` can
follow the run from another process (or machine with a shared file system)::

    trainer = GRPOTrainer(..., callbacks=[JsonlLogCallback("runs/my-run.jsonl")])

Each line is flushed as it is written, so a follower never waits on a buffer. NaN / inf
values become ``null`` (JSON has no NaN); a write error is reported once and never stops
training.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return float(value)  # tensors, numpy scalars
    except (TypeError, ValueError):
        return str(value)


class JsonlLogCallback(TrainerCallback):
    """Append ``{"step": global_step, **logs}`` to ``path`` on every log event (main process only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None
        self._failed = False

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - transformers signature
        if not logs or self._failed or not getattr(state, "is_world_process_zero", True):
            return
        try:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="utf-8")
            row = {"step": state.global_step, **{str(k): _clean(v) for k, v in logs.items()}}
            self._handle.write(json.dumps(row) + "\n")
            self._handle.flush()
        except OSError as exc:  # the monitor must never break the training it watches
            self._failed = True
            print(f"rftfm: cannot write {self.path}: {exc}; log forwarding disabled", file=sys.stderr)

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.close()
            self._handle = None
