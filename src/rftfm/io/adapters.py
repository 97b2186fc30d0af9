"""Framework log adapters: OpenRLHF, verl, TRL and plain JSONL/CSV logs -> :mod:`rftfm.records`.

One mapping table per framework (logged key -> :class:`~rftfm.records.StepRecord` field). When
several keys of a table map to one field, the first one present in the log wins (table order).
Keys that are already StepRecord field names map to themselves in every format. Numeric keys
no table knows go to ``StepRecord.extra`` under their logged name; nothing is dropped silently.

Signals a framework does not log stay ``None`` (missing); the detector and the diagnoser use
what is there (see ``docs/integrations/*.md`` and :func:`coverage`). Trajectory records exist
only for the OpenRLHF / RFT-FaultBench layout, whose trajectory file logs every completion;
TRL and verl metric logs carry step aggregates only.

Formats:

* ``openrlhf`` — the published benchmark layout (``openrlhf_train_train_step.jsonl`` lines with a
  ``metrics`` dict, plus ``openrlhf_train_trajectory.jsonl``); also OpenRLHF's own ``train/*``
  metric names. Reuses :data:`rftfm.io.loader.STEP_ALIASES` / ``TRAJECTORY_ALIASES``.
* ``verl`` — ``trainer.logger=[console,file]``: the file logger's ``{"step": N, "data": {...}}``
  lines, flat dicts of verl metric keys, or console lines ``step:N - key:value - ...``.
* ``trl`` — ``Trainer.state.log_history`` dicts (``trainer_state.json``) or a JSONL of
  ``TrainerCallback.on_log`` dicts (see :class:`rftfm.integrations.trl_log.JsonlLogCallback`).
* ``jsonl`` — one JSON object (or CSV row, for ``.csv`` files) per step with a ``step`` key and
  StepRecord field names.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from rftfm.io.faultbench import RUN_INFO_FILE, STEP_FILE, TRAJ_FILE
from rftfm.io.follow import Follower, poll_loop
from rftfm.io.loader import _TRAJ_KNOWN, STEP_ALIASES, TRAJECTORY_ALIASES, _flatten
from rftfm.records import STEP_METRICS, LABEL_FIELDS, StepRecord, TrajectoryFlags, TrajectoryRecord, finite_or_none

FORMATS: tuple[str, ...] = ("openrlhf", "verl", "trl", "jsonl")

# --- one table per framework ------------------------------------------------------------------

#: OpenRLHF: the published benchmark's names (the loader's table), also under OpenRLHF's wandb
#: prefix ``train/<key>`` (its trainers log ``{"train/%s" % k: v}`` of their status dict).
_OPENRLHF_NAMES: dict[str, str] = {
    **{key: name for key, name in STEP_ALIASES.items() if name in STEP_METRICS},
    "policy_entropy": "entropy",
    "actor_lr": "learning_rate",
}
OPENRLHF_STEP_KEYS: dict[str, str] = {**_OPENRLHF_NAMES, **{f"train/{key}": name for key, name in _OPENRLHF_NAMES.items()}}

#: verl (``verl/trainer/ppo/metric_utils.py`` and the actor workers' metric names).
VERL_STEP_KEYS: dict[str, str] = {
    "critic/score/mean": "reward_mean",  # verifier score: the reward before KL shaping
    "critic/rewards/mean": "reward_mean",  # fallback: reward after in-reward KL
    "actor/kl_loss": "kl",  # KL to the reference policy (use_kl_loss)
    "critic/kl": "kl",  # KL to the reference policy (use_kl_in_reward)
    "actor/entropy": "entropy",
    "actor/pg_loss": "policy_loss",
    "actor/grad_norm": "grad_norm",
    "actor/lr": "learning_rate",
    "actor/pg_clipfrac_lower": "clip_ratio_low",
    "actor/pg_clipfrac": "clip_ratio_region",
    "response_length/mean": "completion_length_mean",
    "response_length/max": "completion_length_max",
    "response_length/clip_ratio": "truncated_ratio",
    "timing_s/step": "step_time_s",
}
#: verl validation keys look like ``val-core/<data_source>/acc/mean@1`` or ``val/test_score/<ds>``.
VERL_EVAL_PATTERN = re.compile(r"^(val-core/.+/(acc|reward|score)/mean@1|val/test_score/.+)$")

#: TRL ``GRPOTrainer`` log history.
TRL_STEP_KEYS: dict[str, str] = {
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "entropy": "entropy",
    "loss": "policy_loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    "clip_ratio/low_mean": "clip_ratio_low",
    "clip_ratio/high_mean": "clip_ratio_high",
    "clip_ratio/region_mean": "clip_ratio_region",
    "completions/mean_length": "completion_length_mean",
    "completions/max_length": "completion_length_max",
    "completions/clipped_ratio": "truncated_ratio",
    "frac_reward_zero_std": "frac_zero_std_groups",
    "step_time": "step_time_s",
}

#: Plain JSONL / CSV: our own names (identity, added for every format below) and the loader's aliases.
JSONL_STEP_KEYS: dict[str, str] = {key: name for key, name in STEP_ALIASES.items() if name in STEP_METRICS}

STEP_KEYS: dict[str, dict[str, str]] = {
    "openrlhf": OPENRLHF_STEP_KEYS,
    "verl": VERL_STEP_KEYS,
    "trl": TRL_STEP_KEYS,
    "jsonl": JSONL_STEP_KEYS,
}

#: Keys that name the step counter, in order of preference.
STEP_NUMBER_KEYS: tuple[str, ...] = ("step", "global_step", "training/global_step", "train/global_step", "_step", "iteration")
#: Fields whose presence alone does not make a log line a training step (config / timing echoes).
_NOT_A_STEP_ALONE = {"learning_rate", "step_time_s"}
#: Logged keys that are never metrics.
_IGNORED_KEYS = {"epoch", "run_id", "time", "timestamp", "elapsed_seconds", "schema_version"} | set(STEP_NUMBER_KEYS)


def coverage(fmt: str) -> dict[str, bool]:
    """Which :data:`~rftfm.records.STEP_METRICS` a format's table can fill (the rest stay missing)."""
    filled = set(STEP_KEYS[fmt].values())
    if fmt == "verl":
        filled.add("eval_accuracy")
    if fmt in ("jsonl", "openrlhf"):
        filled |= set(STEP_METRICS)  # these layouts log our own names
    return {name: name in filled for name in STEP_METRICS}


# --- mapping one flat metrics dict ------------------------------------------------------------


def _step_number(obj: dict[str, Any]) -> int | None:
    for key in STEP_NUMBER_KEYS:
        value = finite_or_none(obj.get(key))
        if value is not None and value >= 0:
            return int(value)
    return None


def map_metrics(fmt: str, metrics: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(StepRecord fields, extra) from one flat dict of logged metrics, using ``fmt``'s table."""
    table = STEP_KEYS[fmt]
    fields: dict[str, float | None] = {}
    used: set[str] = set()
    for key, name in table.items():  # table order decides between synonyms
        if name not in fields and key in metrics and finite_or_none(metrics[key]) is not None:
            fields[name] = finite_or_none(metrics[key])
            used.add(key)
    for name in STEP_METRICS:  # our own names map to themselves
        if name not in fields and name in metrics and finite_or_none(metrics[name]) is not None:
            fields[name] = finite_or_none(metrics[name])
            used.add(name)
    if fmt == "verl" and "eval_accuracy" not in fields:
        for key in sorted(k for k in metrics if VERL_EVAL_PATTERN.match(str(k))):
            if finite_or_none(metrics[key]) is not None:
                fields["eval_accuracy"] = finite_or_none(metrics[key])
                used.add(key)
                break
    extra: dict[str, float | None] = {}
    for key, value in metrics.items():
        key = str(key)
        if key in used or key in table or key in _IGNORED_KEYS or key in LABEL_FIELDS or key in STEP_METRICS:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            extra[key] = finite_or_none(value)
    return fields, extra


def is_training_step(fields: dict[str, float | None]) -> bool:
    """A log line is a training step when it has a dynamics metric (not only lr / timing)."""
    return any(v is not None for k, v in fields.items() if k not in _NOT_A_STEP_ALONE)


# --- line parsers -------------------------------------------------------------------------------

_VERL_CONSOLE = re.compile(r"^\s*(?:\(\w+ pid=\d+\)\s*)?step[: ]\s*(\d+):?\s*-\s*(.*)$")


def parse_verl_console(line: str) -> dict[str, Any] | None:
    """``step:12 - actor/entropy:0.51 - critic/score/mean:0.3`` -> dict (None if not such a line)."""
    match = _VERL_CONSOLE.match(line)
    if not match or len(match.group(1)) > 18:  # no step, or one beyond int64
        return None
    out: dict[str, Any] = {"step": int(match.group(1))}
    for part in match.group(2).split(" - "):
        key, sep, value = part.rpartition(":")
        if not sep or not key.strip():
            continue
        try:
            out[key.strip()] = float(value.strip().replace("np.float64(", "").rstrip(")"))
        except ValueError:
            continue
    return out


def sniff(obj: dict[str, Any] | None, line: str = "") -> str | None:
    """The format of one parsed log line, or None when this line alone does not tell."""
    if obj is None:
        return "verl" if parse_verl_console(line) else None
    if isinstance(obj.get("metrics"), dict):
        return "openrlhf"
    if isinstance(obj.get("data"), dict) and "step" in obj:
        return "verl"
    keys = set(map(str, obj))
    if any(k.startswith(("critic/", "actor/", "response_length/", "timing_s/")) for k in keys):
        return "verl"
    if keys & {"frac_reward_zero_std", "completions/mean_length", "reward_std", "num_tokens"} or any(
        k.startswith(("rewards/", "clip_ratio/", "completions/")) for k in keys
    ):
        return "trl"
    if "log_history" in keys:
        return "trl"
    if keys & set(STEP_METRICS):
        return "jsonl"
    if any(k.startswith("train/") and k in OPENRLHF_STEP_KEYS for k in keys):
        return "openrlhf"
    if keys & {"loss", "learning_rate", "epoch"}:
        return "trl"
    return None


@dataclass
class AdapterStats:
    """What the adapter read and skipped (the monitor counts bad input, never crashes on it)."""

    format: str | None = None
    lines: int = 0
    steps: int = 0
    trajectories: int = 0
    non_step_lines: int = 0
    malformed_lines: int = 0
    out_of_order: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem)


def _json_obj(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # bad JSON (JSONDecodeError), a >4300-digit number, deep nesting
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
    if step is None:
        return None

    def num(name: str) -> float | None:
        return finite_or_none(row.get(name))

    def count(name: str) -> int:
        value = num(name)
        return int(value) if value is not None else 0

    if step < 0:
        return None
    length = num("response_length")
    flags = TrajectoryFlags(**{f: bool(row.get(f) or False) for f in ("empty_response", "short_response", "long_response", "truncated")})
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


class StepParser:
    """Turns log lines of one format (or ``auto``) into StepRecords, counting what it skips."""

    def __init__(self, fmt: str = "auto", run_id: str | None = None):
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
        self.stats = AdapterStats()
        self.format = None if fmt == "auto" else fmt
        self.run_id = run_id
        self.finished = False  # an end-of-run marker was seen (TRL's train_runtime summary)
        self._csv_header: list[str] | None = None
        self._count = 0

    @property
    def format(self) -> str | None:
        return self.stats.format

    @format.setter
    def format(self, value: str | None) -> None:
        self.stats.format = value

    def _flat(self, line: str) -> dict[str, Any] | None:
        """One line -> flat metrics dict (with ``step`` when logged), or None."""
        stripped = line.strip()
        if not stripped:
            return None
        looks_json = stripped.startswith(("{", "["))
        obj = _json_obj(stripped) if looks_json else None
        if obj is None and not looks_json:
            if self.format in (None, "verl"):
                console = parse_verl_console(stripped)
                if console is not None:
                    self.format = self.format or "verl"
                    return console
            if self.format in (None, "jsonl") and "," in stripped:
                return self._csv_row(stripped)
            self.stats.non_step_lines += 1
            return None
        if obj is None:
            self.stats.malformed_lines += 1
            return None
        if self.format is None:
            self.format = sniff(obj)
            if self.format is None:
                self.stats.non_step_lines += 1
                return None
        if isinstance(obj.get("metrics"), dict):  # published layout
            flat = dict(obj["metrics"])
            for key in ("step", "run_id"):
                if key in obj:
                    flat[key] = obj[key]
            return flat
        if isinstance(obj.get("data"), dict):  # verl file logger
            return {**obj["data"], "step": obj.get("step")}
        return obj

    def _csv_row(self, line: str) -> dict[str, Any] | None:
        try:
            cells = next(csv.reader(io.StringIO(line)))
        except (csv.Error, StopIteration):
            self.stats.malformed_lines += 1
            return None
        if self._csv_header is None:
            self._csv_header = [c.strip() for c in cells]
            if not (set(self._csv_header) & (set(STEP_METRICS) | set(JSONL_STEP_KEYS) | set(STEP_NUMBER_KEYS))):
                self._csv_header = None
                self.stats.non_step_lines += 1
                return None
            self.format = self.format or "jsonl"
            return None
        if len(cells) != len(self._csv_header):
            self.stats.malformed_lines += 1
            return None
        return {k: (finite_or_none(v) if v.strip() else None) for k, v in zip(self._csv_header, cells)}

    def parse_obj(self, flat: dict[str, Any]) -> StepRecord | None:
        """A flat metrics dict -> StepRecord (None for eval / summary lines)."""
        if "train_runtime" in flat:
            self.finished = True
        fmt = self.format or "jsonl"
        fields, extra = map_metrics(fmt, flat)
        if not is_training_step(fields):
            self.stats.non_step_lines += 1
            return None
        step = _step_number(flat)
        self._count += 1
        if step is None:
            step = self._count
        run_id = self.run_id or (str(flat["run_id"]) if flat.get("run_id") else "run")
        try:
            record = StepRecord(run_id=run_id, step=step, extra=extra, **fields)
        except (ValidationError, ValueError, TypeError):
            self.stats.malformed_lines += 1
            return None
        self.stats.steps += 1
        return record

    def parse_line(self, line: str) -> StepRecord | None:
        """One log line -> StepRecord, or None (counted as non-step or malformed; never raises)."""
        self.stats.lines += 1
        try:
            flat = self._flat(line)
            return None if flat is None else self.parse_obj(flat)
        except Exception as exc:  # a line the parsers did not foresee: counted, never fatal
            self.stats.malformed_lines += 1
            self.stats.note(f"unparsable line ({type(exc).__name__})")
            return None


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
    states = sorted(path.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name.split("-")[-1].isdigit() else -1)
    return states[-1] if states else None


def resolve(path: str | Path, fmt: str = "auto") -> tuple[str, Path, Path | None]:
    """(kind, step file, trajectory file) for ``path``; kind is 'lines' or 'trainer_state'.

    Raises ``FileNotFoundError`` / ``ValueError`` with a message a user can act on.
    """
    path = Path(path)
    if path.is_dir():
        sub = _find_openrlhf_dir(path)
        if sub is not None:  # trajectories are read in the OpenRLHF layout only
            return "lines", sub / STEP_FILE, (sub / TRAJ_FILE if fmt in ("auto", "openrlhf") else None)
        state = _latest_trainer_state(path)
        if state is not None and fmt in ("auto", "trl"):
            return "trainer_state", state, None
        for name in ("metrics.jsonl", "train_log.jsonl", "log.jsonl"):
            if (path / name).exists():
                return "lines", path / name, None
        raise ValueError(
            f"{path} is a directory without a known log: expected {STEP_FILE} (OpenRLHF / RFT-FaultBench), "
            "trainer_state.json (TRL) or metrics.jsonl (verl file logger)"
        )
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
        self.parser = StepParser("openrlhf" if self.traj_path is not None and fmt == "auto" else fmt, self.run_id)
        self.stats = self.parser.stats
        self._steps = Follower(self.step_path) if self.kind == "lines" else None
        self._trajs = Follower(self.traj_path) if self.traj_path is not None else None
        self._pending: list[StepRecord] = []
        self._traj_by_step: dict[int, list[TrajectoryRecord]] = {}
        self._max_traj_step = -1
        self._last_step = -1
        self._state_sig: tuple[float, int] | None = None

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
        except (OSError, json.JSONDecodeError):
            return []  # being rewritten: try again at the next poll
        self._state_sig = sig
        history = doc.get("log_history") if isinstance(doc, dict) else None
        if not isinstance(history, list):
            self.stats.note(f"{self.step_path}: no log_history list")
            return []
        self.parser.format = self.parser.format or "trl"
        records = []
        for entry in history:
            if isinstance(entry, dict):
                self.stats.lines += 1
                record = self.parser.parse_obj(entry)
                if record is not None:
                    records.append(record)
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
                record = self.parser.parse_line(line)
                if record is not None:
                    self._accept(record)
        else:
            records = self._read_trainer_state()
            new += len(records)
            for record in records:
                if record.step > self._last_step:
                    self._accept(record)
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
                    record = self.parser.parse_line(line)
                    if record is not None:
                        self._accept(record)
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

    def follow(self, interval: float = 0.5, idle_timeout: float | None = None, should_stop=None) -> Iterator[list[Event]]:
        """Yield batches of completed steps as the log grows (empty batches on idle polls)."""
        stop = lambda: self.finished or (should_stop is not None and should_stop())  # noqa: E731
        yield from poll_loop(self.poll, interval, idle_timeout, stop)
        yield self.finish()

    def close(self) -> None:
        for follower in (self._steps, self._trajs):
            if follower is not None:
                follower.close()


def read_log(path: str | Path, fmt: str = "auto", run_id: str | None = None) -> tuple[list[Event], AdapterStats]:
    """Read a whole log (file or run directory) into ``(StepRecord, trajectories)`` events."""
    source = LogSource(path, fmt, run_id)
    try:
        return source.read_all(), source.stats
    finally:
        source.close()
