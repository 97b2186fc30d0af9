"""A ``transformers.TrainerCallback`` that appends every ``on_log`` dict as one JSON line.

This is the one line a TRL user adds so that ``rftfm watch run.jsonl --format trl`` can
follow the run from another process (or machine with a shared file system)::

    trainer = GRPOTrainer(..., callbacks=[JsonlLogCallback("runs/my-run.jsonl")])

Each line is flushed as it is written, so a follower never waits on a buffer. NaN and inf
are written as ``NaN`` / ``Infinity`` (as Python's json module and TRL's own ``trainer_state.json``
write them), so a NaN stays distinguishable from a metric that was not logged; a write error is
reported once and never stops training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def _clean(value: Any) -> Any:
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


class WatchCallback(TrainerCallback):
    """Alert-only monitoring inside the training process: ``rftfm watch`` without a log file.

    Each ``on_log`` dict goes through the TRL adapter to the shared :class:`~rftfm.fm.monitor.RunMonitor`;
    alarm episodes are printed when they start, change diagnosis and clear and, with ``incidents=``,
    every alarm and diagnosis is recorded. It never changes the trainer (the closed loop does
    that) and never raises into it: any monitor failure is recorded and skipped::

        trainer = GRPOTrainer(..., callbacks=[WatchCallback("my-run", incidents="incidents.db")])
    """

    def __init__(
        self,
        run_id: str,
        incidents: str | Path | None = None,
        detector: Any = None,
        diagnoser: Any = None,
        task_group: str | None = None,
        model_size: str | None = None,
        quiet: bool = False,
    ):
        from rftfm.fm.incidents import IncidentStore
        from rftfm.fm.monitor import RunMonitor, load_detector, load_diagnoser
        from rftfm.io.adapters import StepParser
        from rftfm.report.console import print_episode

        if detector is None:
            detector, why = load_detector()
            if why and not quiet:
                print(f"rftfm: {why}", file=sys.stderr)
        if diagnoser is None and detector is not None:
            diagnoser, _ = load_diagnoser()
        self.store = IncidentStore(incidents) if incidents is not None else None
        self.parser = StepParser("trl", run_id=run_id)
        self.monitor = RunMonitor(
            run_id, detector, diagnoser, self.store, None if quiet else print_episode, task_group, model_size
        )

    @property
    def alarms(self):
        return self.monitor.result.alarms

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not getattr(state, "is_world_process_zero", True):
            return
        try:
            record = self.parser.parse_obj({"step": state.global_step, **{str(k): _clean(v) for k, v in logs.items()}})
            if record is not None:
                self.monitor.observe(record, [])
        except Exception as exc:  # the monitor must never break the training it watches
            self.monitor.note_error(f"on_log: {exc}")

    @property
    def episodes(self):
        return self.monitor.result.episodes

    def on_train_end(self, args, state, control, **kwargs):
        self.monitor.finish()
        self.parser.close()  # the per-field source and gap counts: self.parser.stats
        if self.store is not None:
            self.store.close()
            self.store = None
