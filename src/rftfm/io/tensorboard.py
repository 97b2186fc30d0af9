"""TensorBoard event files -> one flat metrics dict per step, read with TensorBoard's own reader.

TRL (through transformers' ``TensorBoardCallback``), OpenRLHF and verl (``trainer.logger=tensorboard``)
write one scalar per tag and step; rows are rebuilt by step. ``EventAccumulator.Reload`` reads
only what was appended since the last call, so a file still being written can be polled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EVENT_GLOB = "events.out.tfevents.*"


def is_event_file(path: Path) -> bool:
    return path.name.startswith("events.out.tfevents.")


def find_event_files(path: Path) -> list[Path]:
    """The event files of a run: the file itself, or those in a directory (the training ones first)."""
    if path.is_file():
        return [path] if is_event_file(path) else []
    found = sorted(path.glob(EVENT_GLOB)) or sorted(path.glob(f"*/{EVENT_GLOB}"))
    return found


class EventReader:
    """Polls one event file; :meth:`rows` returns every step's scalars read so far, by step."""

    def __init__(self, path: Path):
        try:
            from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
        except ImportError as exc:  # a dependency of rftfm; say so if an install lacks it
            raise ValueError(
                f"{path} is a TensorBoard event file: reading it needs the tensorboard package ({exc})"
            ) from exc
        self.path = path
        self._acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        self._rows: dict[int, dict[str, Any]] = {}
        self._seen: dict[str, int] = {}

    def poll(self) -> dict[int, dict[str, Any]]:
        """step -> {tag: value} of everything read so far (new events merged in)."""
        try:
            self._acc.Reload()
        except Exception as exc:  # a truncated record at the end of a file being written: try again later
            raise OSError(f"cannot read {self.path}: {exc}") from exc
        for tag in self._acc.Tags().get("scalars", []):
            events = self._acc.Scalars(tag)
            for event in events[self._seen.get(tag, 0) :]:
                self._rows.setdefault(int(event.step), {})[tag] = float(event.value)
            self._seen[tag] = len(events)
        return self._rows
