"""Log lines (or already-parsed dicts) of one run -> StepRecords, counting everything it skips.

A line may be a JSON object (TRL ``on_log`` JSONL, verl's file logger ``{"step", "data"}``,
the RFT-FaultBench ``{"metrics"}`` layout, a W&B history export), a CSV row, a verl console
``step:N - key:value`` line, a TRL console line with a printed ``{'loss': ...}`` dict, or an
OpenRLHF progress bar with a metrics postfix. The first line whose keys tell the framework fixes
it (:func:`rftfm.io.mapping.sniff_keys`); an explicit format that the log contradicts is a
:class:`FormatMismatch`, and nothing is scored under it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rftfm.io.console import ProgressTracker, clean, parse_postfix, parse_python_dict, parse_verl_step
from rftfm.io.fields import FieldResolver
from rftfm.io.mapping import FRAMEWORKS, STEP_NUMBER_KEYS, Sniffed, flat_table, sniff_keys
from rftfm.records import StepRecord, finite_or_none

FORMAT_NAMES = {"openrlhf": "OpenRLHF", "verl": "verl", "trl": "TRL", "jsonl": "rftfm JSONL"}
#: Line lengths at which loggers cut long lines (W&B's output.log keeps 4,096 characters).
_CUT_LENGTHS = frozenset({1024, 2048, 4096, 8192, 16384})
#: Header names of a W&B history export's step column.
_WANDB_STEP = {"_step", "Step"}


class FormatMismatch(ValueError):
    """An explicit ``--format`` that the log's own keys contradict."""


@dataclass
class AdapterStats:
    """What the adapter read and skipped (the monitor counts bad input, never crashes on it)."""

    format: str | None = None
    container: str | None = None  # how the log is laid out, e.g. "verl console log"
    lines: int = 0
    steps: int = 0
    trajectories: int = 0
    non_step_lines: int = 0
    malformed_lines: int = 0
    out_of_order: int = 0
    non_rl_lines: int = 0  # lines with step metrics but no RL signal (a supervised fine-tuning log)
    non_rl_keys: list[str] = field(default_factory=list)
    cut_lines: int = 0  # lines exactly as long as a logger's line limit: probably cut short
    mismatch: str | None = None  # what the log looks like when it contradicts an explicit format
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-field source and counts
    metric_problems: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(problem)

    @property
    def described(self) -> str:
        """ "verl console log (verl keys)" — what the reader identified."""
        if self.container is None:
            return FORMAT_NAMES.get(self.format or "", "unknown format")
        name = FORMAT_NAMES.get(self.format or "", "") if self.steps else ""
        return f"{self.container} ({name} keys)" if name and name not in self.container else self.container

    def no_steps_reason(self, path: object) -> str:
        """Why a log gave no training step, in one line."""
        if self.mismatch:
            return self.mismatch
        if self.non_rl_lines:
            keys = ", ".join(self.non_rl_keys[:5])
            return (
                f"no RL training steps in {path}: {self.non_rl_lines} line(s) log step metrics ({keys}) but no reward, "
                "KL, completion length or clipping: not a reinforcement fine-tuning log (supervised fine-tuning?)"
            )
        return f"no training step found in {path}"


class StepParser:
    """Turns one run's log lines of one format (or ``auto``) into StepRecords."""

    def __init__(self, fmt: str = "auto", run_id: str | None = None):
        if fmt != "auto" and fmt not in FRAMEWORKS:
            raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FRAMEWORKS)}")
        self.stats = AdapterStats()
        self.expected = None if fmt == "auto" else fmt
        self.run_id = run_id
        self.finished = False  # an end-of-run marker was seen (TRL's train_runtime summary)
        self.resolver: FieldResolver | None = None
        self._strong = False
        self._csv_header: list[str | None] | None = None
        self._bars = ProgressTracker()
        self._postfix_seen: set[str] = set()
        self._last_step = 0
        if self.expected is not None:
            self._use(Sniffed(self.expected, False))

    @property
    def format(self) -> str | None:
        return self.stats.format

    @format.setter
    def format(self, value: str | None) -> None:  # kept for callers that set the format of a container
        if value is not None and self.resolver is None:
            self._use(Sniffed(value, False))

    def _use(self, sniffed: Sniffed) -> None:
        self.stats.format = sniffed.framework
        self.resolver = FieldResolver(sniffed.framework, sniffed.prefix)
        self._strong = sniffed.strong

    def identify(self, keys: set[str], container: str, sniffed: Sniffed | None = None) -> bool:
        """Fix the format from a line's keys (or a layout that tells it); False when the line must not be scored."""
        if self.stats.mismatch:
            return False
        if self.stats.container is None:
            self.stats.container = container
        sniffed = sniffed or sniff_keys(keys)
        if sniffed is None or self._strong:
            return True
        if self.expected is not None:
            if sniffed.strong and sniffed.framework != self.expected:
                name = FORMAT_NAMES[sniffed.framework]
                looks = container if name in container else f"{container} with {name} keys"
                self.stats.mismatch = (
                    f"this log looks like a {looks} (--format {sniffed.framework}), not --format {self.expected}: "
                    f"run with --format {sniffed.framework} or auto"
                )
                return False
            if sniffed.strong:
                self._use(Sniffed(self.expected, True, sniffed.prefix))
            return True
        if self.stats.steps == 0 and (self.resolver is None or sniffed.strong):
            self._use(sniffed)  # a framework-specific key overrules a guess made from generic ones
        return True

    # --- one line -> flat metrics dict ---------------------------------------------------------

    def _json_line(self, text: str) -> dict[str, Any] | None:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):  # bad JSON, a >4300-digit number, deep nesting
            self.stats.malformed_lines += 1
            return None
        if not isinstance(obj, dict):
            self.stats.malformed_lines += 1
            return None
        if isinstance(obj.get("metrics"), dict):  # the published RFT-FaultBench / OpenRLHF layout
            flat = {k: v for k, v in obj["metrics"].items()}
            for key in ("step", "run_id"):
                if key in obj:
                    flat[key] = obj[key]
            return flat if self.identify(set(flat), "RFT-FaultBench step JSONL", Sniffed("openrlhf", True)) else None
        if isinstance(obj.get("data"), dict) and "step" in obj:  # verl's file logger
            flat = {**obj["data"], "step": obj.get("step")}
            return flat if self.identify(set(flat), "verl JSONL file logger", Sniffed("verl", True)) else None
        container = "W&B history export (JSONL)" if "_step" in obj else "JSONL of metric dicts"
        return obj if self.identify(set(map(str, obj)), container) else None

    def _csv_row(self, text: str) -> dict[str, Any] | None:
        try:
            cells = next(csv.reader(io.StringIO(text)))
        except (csv.Error, StopIteration):
            self.stats.malformed_lines += 1
            return None
        if self._csv_header is None:
            header = [_csv_column(c) for c in cells]
            names = {h for h in header if h}
            known = set().union(*(flat_table(f) for f in FRAMEWORKS)) | set(STEP_NUMBER_KEYS)
            if not names & known and sniff_keys(names) is None:
                self.stats.non_step_lines += 1
                return None
            self._csv_header = header
            wandb = bool({c.strip() for c in cells} & _WANDB_STEP)
            self.identify(names, "W&B history export (CSV)" if wandb else "CSV")
            return None
        if len(cells) != len(self._csv_header):
            self.stats.malformed_lines += 1
            return None
        # an empty cell is a metric not logged at that step (absent), "nan" a NaN (counted)
        return {k: _csv_value(v) for k, v in zip(self._csv_header, cells) if k and v.strip()}

    def _console_segment(self, segment: str) -> dict[str, Any] | None:
        """One visible segment of a console line -> flat dict, or None."""
        verl = parse_verl_step(segment) if "step" in segment else None
        if verl is not None:
            return verl if self.identify(set(verl) - {"step"}, "verl console log") else None
        self._bars.see(segment)
        if "{'" in segment:
            logged = parse_python_dict(segment)
            if logged is not None and sniff_keys(set(logged)) is not None:
                if not self.identify(set(logged), "TRL console output (printed log dicts)"):
                    return None
                if "step" not in logged and self._bars.step is not None:
                    logged["step"] = self._bars.step
                return logged
        if "=" in segment and "]" in segment:
            postfix = parse_postfix(segment)
            if postfix is not None and (sniff_keys(set(postfix)) or Sniffed("", False)).framework == "openrlhf":
                key = segment[: segment.rfind("[")]
                if key in self._postfix_seen:  # a redraw of a bar state already read
                    return None
                self._postfix_seen.add(key)
                return (
                    postfix if self.identify(set(postfix), "OpenRLHF console output (progress-bar postfix)") else None
                )
        return None

    def _flats(self, line: str) -> list[dict[str, Any]]:
        """One line -> its flat metrics dicts (with ``step`` when logged); none is counted.

        A console line may hold several: tqdm redraws a bar with a carriage return, so a whole
        stretch of training can arrive as one physical line.
        """
        stripped = line.strip()
        if not stripped:
            return []
        if len(line.rstrip("\n")) in _CUT_LENGTHS:
            self.stats.cut_lines += 1
        if stripped.startswith("{") and not stripped.startswith("{'"):
            flat = self._json_line(stripped)
            return [flat] if flat is not None else []
        if stripped.startswith("[") and _is_json(stripped):  # JSON, but not an object
            self.stats.malformed_lines += 1
            return []
        console = "\r" in stripped or (self.stats.container is not None and "console" in self.stats.container)
        flats = [f for f in map(self._console_segment, clean(stripped)) if f is not None]
        if flats:
            return flats
        if not console and "," in stripped and self.stats.mismatch is None:
            row = self._csv_row(stripped)
            return [row] if row is not None else []
        self.stats.non_step_lines += 1
        return []

    # --- flat dict -> StepRecord --------------------------------------------------------------

    def parse_obj(self, flat: dict[str, Any]) -> StepRecord | None:
        """A flat metrics dict -> StepRecord (None for eval / summary / non-RL lines, counted)."""
        if "train_runtime" in flat:
            self.finished = True
        if self.resolver is None:
            if not self.identify(set(map(str, flat)), self.stats.container or "metric dicts"):
                return None
            if self.resolver is None:
                self._use(Sniffed("jsonl", False))
        if self.stats.mismatch:
            return None
        resolver = self.resolver
        assert resolver is not None
        metrics = resolver.prepare(flat)
        if not resolver.is_rl_step(metrics):
            self.stats.non_step_lines += 1
            if _has_metrics(flat):
                self.stats.non_rl_lines += 1
                for key in flat:
                    if (
                        len(self.stats.non_rl_keys) < 8
                        and key not in self.stats.non_rl_keys
                        and key not in STEP_NUMBER_KEYS
                    ):
                        self.stats.non_rl_keys.append(str(key))
            return None
        step = _step_number(flat)
        if step is None:
            step = self._last_step + 1
        fields, extra = resolver.map(metrics, step)
        run_id = self.run_id or (str(flat["run_id"]) if flat.get("run_id") else "run")
        try:
            record = StepRecord(run_id=run_id, step=step, extra=extra, **fields)
        except (ValidationError, ValueError, TypeError):
            self.stats.malformed_lines += 1
            return None
        self._last_step = max(self._last_step, step)
        self.stats.steps += 1
        return record

    def parse_lines(self, line: str) -> list[StepRecord]:
        """One log line -> its StepRecords (usually one or none; skips are counted; never raises)."""
        self.stats.lines += 1
        try:
            records = [self.parse_obj(flat) for flat in self._flats(line)]
        except Exception as exc:  # a line the parsers did not foresee: counted, never fatal
            self.stats.malformed_lines += 1
            self.stats.note(f"unparsable line ({type(exc).__name__})")
            return []
        return [r for r in records if r is not None]

    def parse_line(self, line: str) -> StepRecord | None:
        """One log line -> its (first) StepRecord, or None."""
        records = self.parse_lines(line)
        return records[0] if records else None

    def close(self) -> None:
        """Fill the per-field problem sentences (at the end of input)."""
        if self.resolver is not None:
            self.stats.fields = self.resolver.report()
            self.stats.metric_problems = self.resolver.problems()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _csv_column(name: str) -> str | None:
    """A CSV header cell -> metric key (W&B panel exports: ``<run> - key``, ``__MIN`` / ``__MAX`` dropped)."""
    name = name.strip()
    if name.endswith(("__MIN", "__MAX")):
        return None
    if " - " in name:
        name = name.rsplit(" - ", 1)[1]
    return "step" if name == "Step" else name


def _csv_value(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def _has_metrics(flat: dict[str, Any]) -> bool:
    return any(
        isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in flat.items() if k not in STEP_NUMBER_KEYS
    )


def _step_number(obj: dict[str, Any]) -> int | None:
    for key in STEP_NUMBER_KEYS:
        value = finite_or_none(obj.get(key))
        if value is not None and 0 <= value < 2**63:
            return int(value)
    return None
