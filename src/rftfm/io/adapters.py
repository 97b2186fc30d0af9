"""Framework logs -> :mod:`rftfm.records`: a path (log file or run directory) read or followed step by step.

Which keys fill which field is in :mod:`rftfm.io.mapping` (one table per framework and version);
how a line becomes a record is in :mod:`rftfm.io.parser`; each field's source key is chosen
once per run and its gaps counted (:mod:`rftfm.io.fields`). Signals a framework does not log
stay ``None`` (missing). Trajectory records exist only for the OpenRLHF / RFT-FaultBench layout,
whose trajectory file logs every completion; TRL and verl metric logs carry step aggregates only.

What a path may be (``--format auto`` tells them apart and says which it found):

* the RFT-FaultBench / OpenRLHF layout (``openrlhf_train_train_step.jsonl`` with a ``metrics``
  dict, plus ``openrlhf_train_trajectory.jsonl``), or a run directory holding it;
* a TRL ``trainer_state.json``, or an output directory with ``checkpoint-*/trainer_state.json``
  (the latest is read);
* a text log: JSONL of TRL ``on_log`` dicts (:class:`rftfm.integrations.trl_log.JsonlLogCallback`),
  verl's file logger, a W&B history export (JSONL or CSV), a CSV of our field names, a verl
  console log (colour codes and Ray prefixes as printed), TRL console output (the printed log
  dicts between progress bars), OpenRLHF console output (the progress bar's metrics postfix);
* a TensorBoard event file, or a directory with one (``runs/*/events.out.tfevents.*``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from rftfm.io.faultbench import RUN_INFO_FILE, STEP_FILE, TRAJ_FILE
from rftfm.io.follow import Follower, poll_loop
from rftfm.io.loader import _TRAJ_KNOWN, TRAJECTORY_ALIASES, _flatten
from rftfm.io.mapping import (  # noqa: F401  (the tables' public home is mapping; kept importable here)
    FRAMEWORKS,
    JSONL_STEP_KEYS,
    OPENRLHF_STEP_KEYS,
    TRL_STEP_KEYS,
    VERL_STEP_KEYS,
    coverage,
    sniff_keys,
)
from rftfm.io.parser import AdapterStats, FormatMismatch, StepParser
from rftfm.io.tensorboard import EventReader, find_event_files, is_event_file
from rftfm.records import StepRecord, TrajectoryFlags, TrajectoryRecord, finite_or_none

FORMATS: tuple[str, ...] = FRAMEWORKS
__all__ = [
    "AdapterStats",
    "FORMATS",
    "FormatMismatch",
    "LogSource",
    "StepParser",
    "coverage",
    "read_log",
    "step_record",
]


def step_record(fmt: str, logs: dict[str, Any], step: int, run_id: str) -> StepRecord | None:
    """One logged metrics dict (e.g. a TRL ``on_log`` dict) -> StepRecord, through ``fmt``'s table.

    None when the dict is not an RL training step (an evaluation or end-of-training summary).
    A monitor that sees a whole run keeps one :class:`StepParser` instead, so that each field's
    source key is chosen once for the run.
    """
    parser = StepParser(fmt, run_id)
    return parser.parse_obj({**logs, "step": step})


def sniff(obj: dict[str, Any] | None, line: str = "") -> str | None:
    """The framework of one log line (a parsed JSON object, or the raw text), or None if it does not tell."""
    if obj is not None:
        if isinstance(obj.get("metrics"), dict):
            return "openrlhf"
        if isinstance(obj.get("data"), dict) and "step" in obj:
            return "verl"
        found = sniff_keys(set(map(str, obj)))
        return found.framework if found else None
    parser = StepParser("auto")
    parser.parse_line(line)
    return parser.format if parser.stats.container else None


def _json_obj(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _trajectory_record(obj: dict[str, Any] | None, run_id: str) -> TrajectoryRecord | None:
    """One published trajectory line -> TrajectoryRecord, or None if it is not one (never raises)."""
    if obj is None:
        return None
    try:
        return _parse_trajectory(obj, run_id)
    except Exception:  # deeply nested or otherwise odd input: counted by the caller
        return None


def _parse_trajectory(obj: dict[str, Any], run_id: str) -> TrajectoryRecord | None:
    """Labels are dropped: they are never a feature."""
    row = _flatten(obj, TRAJECTORY_ALIASES, _TRAJ_KNOWN)
    step = finite_or_none(row.get("rollout_step"))
    if step is None or step < 0:
        return None

    def num(name: str) -> float | None:
        return finite_or_none(row.get(name))

    def count(name: str) -> int:
        value = num(name)
        return int(value) if value is not None else 0

    length = num("response_length")
    flags = TrajectoryFlags(
        **{f: bool(row.get(f) or False) for f in ("empty_response", "short_response", "long_response", "truncated")}
    )
    completion = row.get("completion")
    return TrajectoryRecord(
        run_id=str(row.get("run_id") or run_id),
        rollout_step=int(step),
        prompt_id=str(row.get("prompt_id") if row.get("prompt_id") is not None else ""),
        group_id=max(int(num("group_id") or 0), 0),
        reward=num("reward"),
        response_length=None if length is None else int(length),
        advantage=num("advantage"),
        ret=num("ret"),
        repetition_ratio=num("repetition_ratio"),
        unique_token_ratio=num("unique_token_ratio"),
        tool_call_count=count("tool_call_count"),
        tool_error_count=count("tool_error_count"),
        flags=flags,
        completion=None if completion is None else str(completion),
    )


# --- sources: a path (file or run directory) -> ordered (StepRecord, trajectories) ------------

Event = tuple[StepRecord, list[TrajectoryRecord]]


def _find_openrlhf_dir(path: Path) -> Path | None:
    if (path / STEP_FILE).exists():
        return path
    found = sorted(path.glob(f"*/{STEP_FILE}"))
    return found[0].parent if found else None


def _latest_trainer_state(path: Path) -> Path | None:
    if (path / "trainer_state.json").exists():
        return path / "trainer_state.json"
    states = sorted(
        path.glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1,
    )
    return states[-1] if states else None


def resolve(path: str | Path, fmt: str = "auto") -> tuple[str, Path, Path | None]:
    """(kind, step file, trajectory file) for ``path``; kind is 'lines', 'trainer_state' or 'tensorboard'.

    Raises ``FileNotFoundError`` / ``ValueError`` with a message a user can act on.
    """
    path = Path(path)
    if path.is_dir():
        sub = _find_openrlhf_dir(path)
        if sub is not None:  # trajectories are read in the OpenRLHF layout only
            return "lines", sub / STEP_FILE, (sub / TRAJ_FILE if fmt in ("auto", "openrlhf") else None)
        state = _latest_trainer_state(path)
        if state is not None:
            return "trainer_state", state, None
        for name in ("metrics.jsonl", "train_log.jsonl", "log.jsonl"):
            if (path / name).exists():
                return "lines", path / name, None
        events = find_event_files(path) or find_event_files(path / "runs")
        if events:
            return "tensorboard", events[-1], None
        raise ValueError(
            f"{path} is a directory without a known log: expected {STEP_FILE} (OpenRLHF / RFT-FaultBench), "
            "trainer_state.json (TRL), metrics.jsonl (verl file logger) or a TensorBoard event file"
        )
    if is_event_file(path):
        return "tensorboard", path, None
    if path.name == "trainer_state.json" or path.suffix == ".json":
        return "trainer_state", path, None
    if path.name == STEP_FILE and (path.parent / TRAJ_FILE).exists():
        return "lines", path, path.parent / TRAJ_FILE
    return "lines", path, None


def run_info_for(path: str | Path) -> dict[str, Any] | None:
    """The benchmark's ``run_info.json`` next to a run directory or its log files, if any (labels: report only)."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    for candidate in (run_dir, run_dir.parent):
        info = candidate / RUN_INFO_FILE
        if info.exists():
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def default_run_id(path: str | Path) -> str:
    """The run id a path stands for: run_info.json's, else the run directory's or the file's name."""
    path = Path(path)
    info = run_info_for(path)
    if info is not None and info.get("run_id"):
        return str(info["run_id"])
    if path.is_dir():
        return path.name
    if path.name in ("trainer_state.json", "metrics.jsonl", STEP_FILE, "train_log.jsonl", "log.jsonl"):
        parent = path.parent.name
        if parent in ("train", "") or parent.startswith("checkpoint-"):
            parent = path.parent.parent.name or parent
        return parent or path.stem
    return path.stem


class LogSource:
    """Incremental reader of one run's log: ``poll()`` returns newly completed steps, in order.

    Works on a finished file or directory and on one still being written (with :mod:`follow`).
    A step whose trajectories live in a separate file (OpenRLHF layout) is released once a
    later step's trajectories appeared, or once a poll found nothing new (the writer is idle),
    or at :meth:`finish`.
    """

    def __init__(self, path: str | Path, fmt: str = "auto", run_id: str | None = None):
        self.path = Path(path)
        self.kind, self.step_path, self.traj_path = resolve(self.path, fmt)
        self.run_id = run_id or default_run_id(self.path)
        self.parser = StepParser(fmt, self.run_id)
        self.stats = self.parser.stats
        if self.kind == "tensorboard" and fmt == "auto":
            self.parser.stats.container = "TensorBoard event file"
        self._steps = Follower(self.step_path) if self.kind == "lines" else None
        self._trajs = Follower(self.traj_path) if self.traj_path is not None else None
        self._pending: list[StepRecord] = []
        self._traj_by_step: dict[int, list[TrajectoryRecord]] = {}
        self._max_traj_step = -1
        self._last_step = -1
        self._state_sig: tuple[float, int] | None = None
        self._state_done = 0  # log_history entries already read (TRL rewrites the file with more)
        self._events = EventReader(self.step_path) if self.kind == "tensorboard" else None
        self._tb_done, self._tb_final = -1, False

    @property
    def format(self) -> str | None:
        return self.parser.format

    @property
    def finished(self) -> bool:
        return self.parser.finished

    def _read_trainer_state(self) -> list[StepRecord]:
        if self.path.is_dir():  # TRL writes a new checkpoint-N/trainer_state.json at every save
            latest = _latest_trainer_state(self.path)
            if latest is not None and latest != self.step_path:
                self.step_path, self._state_sig = latest, None
        try:
            st = self.step_path.stat()
        except OSError:
            return []
        sig = (st.st_mtime, st.st_size)
        if sig == self._state_sig:
            return []
        try:
            doc = json.loads(self.step_path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError, RecursionError):
            return []  # being rewritten: try again at the next poll
        self._state_sig = sig
        history = doc.get("log_history") if isinstance(doc, dict) else None
        if not isinstance(history, list):
            self.stats.note(f"{self.step_path}: no log_history list")
            return []
        container = (
            f"TRL trainer_state.json ({self.step_path.parent.name})" if self.path.is_dir() else "TRL trainer_state.json"
        )
        entries = [e for e in history if isinstance(e, dict)]
        self.stats.lines = len(entries)
        records = []
        for entry in entries[self._state_done :]:
            if not self.parser.identify(set(map(str, entry)), container):
                break
            record = self.parser.parse_obj(entry)
            if record is not None:
                records.append(record)
        self._state_done = len(entries)
        return records

    def _read_tensorboard(self) -> list[StepRecord]:
        assert self._events is not None
        try:
            rows = self._events.poll()
        except OSError as exc:  # a record still being written: read again at the next poll
            self.stats.note(str(exc))
            return []
        new = sorted(s for s in rows if s > self._tb_done)
        if not new:
            return []
        records = []
        for step in new[:-1] if not self._tb_final else new:  # the last step may still be getting scalars
            row = rows[step]
            self.stats.lines += 1
            if not self.parser.identify(set(row), "TensorBoard event file"):
                break
            record = self.parser.parse_obj({**row, "step": step})
            if record is not None:
                records.append(record)
            self._tb_done = step
        return records

    def _release(self, idle: bool) -> list[Event]:
        out = []
        while self._pending:
            record = self._pending[0]
            if self._trajs is not None and not idle and record.step >= self._max_traj_step:
                break
            self._pending.pop(0)
            trajectories = self._traj_by_step.pop(record.step, [])
            for old in [s for s in self._traj_by_step if s < record.step]:
                del self._traj_by_step[old]  # orphans of a skipped step: memory stays bounded
            self.stats.trajectories += len(trajectories)
            out.append((record, trajectories))
        return out

    def _accept(self, record: StepRecord) -> None:
        if record.step <= self._last_step:
            self.stats.out_of_order += 1
            self.stats.steps -= 1
            return
        self._last_step = record.step
        self._pending.append(record)

    def poll(self) -> list[Event]:
        """Newly completed steps since the last poll (never raises on bad input)."""
        new = 0
        if self._trajs is not None:
            for line in self._trajs.poll():
                new += 1
                record = _trajectory_record(_json_obj(line), self.run_id)
                if record is None:
                    if line.strip():
                        self.stats.malformed_lines += 1
                    continue
                self._traj_by_step.setdefault(record.rollout_step, []).append(record)
                self._max_traj_step = max(self._max_traj_step, record.rollout_step)
        if self._steps is not None:
            for line in self._steps.poll():
                new += 1
                for record in self.parser.parse_lines(line):
                    self._accept(record)
        else:
            records = self._read_trainer_state() if self.kind == "trainer_state" else self._read_tensorboard()
            new += len(records)
            for record in records:
                if record.step > self._last_step:
                    self._accept(record)
                else:
                    self.stats.out_of_order += 1
                    self.stats.steps -= 1
        return self._release(idle=new == 0)

    def finish(self) -> list[Event]:
        """End of input: parse a held-back partial last line and release every pending step."""
        for follower, is_traj in ((self._trajs, True), (self._steps, False)):
            if follower is None:
                continue
            for line in follower.flush_partial():
                if is_traj:
                    record = _trajectory_record(_json_obj(line), self.run_id)
                    if record is not None:
                        self._traj_by_step.setdefault(record.rollout_step, []).append(record)
                else:
                    for record in self.parser.parse_lines(line):
                        self._accept(record)
        if self.kind == "tensorboard":
            self._tb_final = True
            for record in self._read_tensorboard():
                self._accept(record)
        self.parser.close()
        return self._release(idle=True)

    def read_all(self) -> list[Event]:
        """Everything the path holds now (no following)."""
        events = []
        while True:
            batch = self.poll()
            events += batch
            if not batch:
                # one more poll distinguishes "nothing new" from "released on idle"
                batch = self.poll()
                events += batch
                if not batch:
                    break
        return events + self.finish()

    def follow(
        self, interval: float = 0.5, idle_timeout: float | None = None, should_stop=None
    ) -> Iterator[list[Event]]:
        """Yield batches of completed steps as the log grows (empty batches on idle polls)."""
        stop = lambda: self.finished or (should_stop is not None and should_stop())  # noqa: E731
        yield from poll_loop(self.poll, interval, idle_timeout, stop)
        yield self.finish()

    def close(self) -> None:
        for follower in (self._steps, self._trajs):
            if follower is not None:
                follower.close()


def read_log(path: str | Path, fmt: str = "auto", run_id: str | None = None) -> tuple[list[Event], AdapterStats]:
    """Read a whole log (file or run directory) into ``(StepRecord, trajectories)`` events.

    Raises :class:`FormatMismatch` when an explicit ``fmt`` contradicts the log's own keys.
    """
    source = LogSource(path, fmt, run_id)
    try:
        events = source.read_all()
    finally:
        source.close()
    if source.stats.mismatch:
        raise FormatMismatch(f"{path}: {source.stats.mismatch}")
    return events, source.stats
