"""One loader for RFT-FaultBench: our generated data and the published dataset's layout.

Returns polars DataFrames (runs, steps, trajectories) with the :mod:`rftfm.records`
column names. Nested JSON objects are flattened (``metrics.*``, ``flags.*`` and
``metadata.*`` lose their prefix when the name is known, keep it otherwise); unknown
fields are kept as extra columns, never dropped. Malformed lines are skipped and counted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from rftfm.io.faultbench import REGISTRY_DIR, RUN_INFO_FILE, STEP_FILE, TMP_PREFIX, TRAJ_FILE
from rftfm.records import RunInfo, finite_or_none

#: Published / OpenRLHF step metric names -> our StepRecord field names.
STEP_ALIASES: dict[str, str] = {
    "global_step": "step",
    "reward": "reward_mean",
    "rewards": "reward_mean",
    "reward_std": "reward_std",
    "eval_acc": "eval_accuracy",
    "eval_accuracy": "eval_accuracy",
    "kl": "kl",
    "entropy": "entropy",
    "policy_entropy": "entropy",
    "loss": "policy_loss",
    "policy_loss": "policy_loss",
    "actor_loss": "policy_loss",
    "grad_norm": "grad_norm",
    "actor_grad_norm": "grad_norm",
    "lr": "learning_rate",
    "actor_lr": "learning_rate",
    "clip_ratio": "clip_ratio_region",
    "response_length": "completion_length_mean",
    "response_length_mean": "completion_length_mean",
    "response_length_max": "completion_length_max",
    "truncated_ratio": "truncated_ratio",
    "step_time": "step_time_s",
}

#: Published trajectory field names -> our TrajectoryRecord field names.
TRAJECTORY_ALIASES: dict[str, str] = {
    "advantage_mean": "advantage",
    "return": "ret",
    "returns": "ret",
}


@dataclass
class LoadReport:
    """What the loader skipped, so nothing is lost silently."""

    malformed_lines: int = 0
    bad_values: int = 0  # schema values of the wrong type (or out of range), loaded as missing
    skipped_paths: int = 0  # run directories that resolve outside the root (symlinks), not read
    files_read: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Benchmark:
    root: Path
    runs: pl.DataFrame
    steps: pl.DataFrame
    trajectories: pl.DataFrame | None
    report: LoadReport


def _flatten(obj: dict[str, Any], aliases: dict[str, str], known: set[str]) -> dict[str, Any]:
    """Flatten one published record: nested dicts lose their prefix if the field is known."""
    out: dict[str, Any] = {}

    def put(key: str, value: Any, prefix: str) -> None:
        name = aliases.get(key, key)
        if isinstance(value, dict) and key != "extra":
            for k, v in value.items():
                put(k, v, f"{prefix}{key}.")
            return
        if key == "extra" and isinstance(value, dict):
            for k, v in value.items():
                out[f"extra.{k}"] = v
            return
        if isinstance(value, float):
            value = finite_or_none(value)
        column = name if (name in known or not prefix) else f"{prefix}{key}"
        if column in out and prefix:  # keep both rather than overwrite
            column = f"{prefix}{key}"
        out[column] = value

    for key, value in obj.items():
        put(key, value, "")
    return out


def _read_jsonl(path: Path, report: LoadReport) -> list[dict[str, Any]]:
    rows = []
    report.files_read += 1
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # bad JSON, a >4300-digit number, deep nesting
                report.malformed_lines += 1
                continue
            if not isinstance(obj, dict):
                report.malformed_lines += 1
                continue
            rows.append(obj)
    return rows


_STEP_KNOWN = set(STEP_ALIASES.values()) | {
    "step",
    "run_id",
    "fault_injection_type",
    "fault_injection_strength",
    "active",
}
_TRAJ_KNOWN = {
    "reward",
    "response_length",
    "advantage",
    "advantage_std",
    "ret",
    "repetition_ratio",
    "unique_token_ratio",
    "tool_call_count",
    "tool_error_count",
    "empty_response",
    "short_response",
    "long_response",
    "truncated",
    "rollout_step",
    "prompt_id",
    "group_id",
    "run_id",
    "fault_injection_type",
    "fault_injection_strength",
    "active",
    "completion",
}


#: Numeric fields of the schema: a value of another type there is loaded as missing (counted).
_NUMERIC = set(STEP_ALIASES.values()) | {
    "reward",
    "response_length",
    "advantage",
    "advantage_std",
    "ret",
    "repetition_ratio",
    "unique_token_ratio",
    "tool_call_count",
    "tool_error_count",
    "rollout_step",
    "group_id",
}
#: Index fields: an invalid value makes the whole line malformed (it cannot be placed).
_INDEX = {"step", "rollout_step", "group_id"}
_INT64_MAX = 2**63 - 1


def _clean_row(
    obj: dict[str, Any], aliases: dict[str, str], known: set[str], report: LoadReport
) -> dict[str, Any] | None:
    """Flatten one JSONL record into loadable values, or None (counted malformed) if it has a bad index.

    Wrong-typed or out-of-range schema values become missing (``report.bad_values``); lists in
    unknown fields become JSON text; strings with lone surrogates get replacement characters.
    """
    try:
        row = _flatten(obj, aliases, known)
    except RecursionError:
        report.malformed_lines += 1
        return None
    if any(isinstance(k, str) and _has_surrogate(k) for k in row):
        row = {_utf8(k): v for k, v in row.items()}
    for key, value in row.items():
        if isinstance(value, str) and _has_surrogate(value):
            value = row[key] = _utf8(value)
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key in _INDEX:
            if isinstance(value, float) and value.is_integer():
                value, is_int = int(value), True
            if not (is_int and 0 <= value <= _INT64_MAX):
                report.malformed_lines += 1
                if len(report.problems) < 50:
                    report.problems.append(f"invalid {key} {str(value)[:40]!r}: line skipped")
                return None
            row[key] = value
        elif key in _NUMERIC and not (isinstance(value, float) or (is_int and abs(value) <= _INT64_MAX)):
            row[key] = None
            report.bad_values += 1
            if len(report.problems) < 50:
                report.problems.append(
                    f"{key}: {type(value).__name__} {str(value)[:40]!r} is not a number: loaded as missing"
                )
        elif isinstance(value, (list, tuple)):
            row[key] = json.dumps(value, default=str)
        elif is_int and abs(value) > _INT64_MAX:
            row[key] = str(value)
    if not isinstance(row.get("run_id", ""), str):
        row["run_id"] = str(row["run_id"])
    return row


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _utf8(text: str) -> str:
    """Text that polars / Parquet can store: lone surrogates (valid JSON escapes, invalid UTF-8) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _within(root: Path, path: Path) -> bool:
    """``path`` resolves inside ``root`` (a symlink out of the benchmark directory does not)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _run_dirs(root: Path, report: LoadReport | None = None) -> list[tuple[str, str, Path]]:
    """(group, run_id, step-file directory) of every complete run under ``root``."""
    found = []
    for step_file in sorted(root.glob(f"*/*/*/{STEP_FILE}")):
        run_dir = step_file.parent.parent
        if run_dir.name.startswith(TMP_PREFIX) or run_dir.parent.name == "metadata":
            continue
        if not _within(root, step_file):
            if report is not None:
                report.skipped_paths += 1
                report.problems.append(f"{run_dir}: resolves outside {root}; not read")
            continue
        found.append((run_dir.parent.name, run_dir.name, step_file.parent))
    return found


def runs_table(infos: Iterable[RunInfo]) -> pl.DataFrame:
    """One row per run: the :class:`RunInfo` fields (``extra`` aside)."""
    return pl.DataFrame([info.model_dump(exclude={"extra"}) for info in infos], infer_schema_length=None)


def load_runs(root: Path) -> pl.DataFrame:
    """Runs table from our ``run_info.json`` files, else from the published registries."""
    root = Path(root)
    infos = [
        RunInfo.model_validate_json(p.read_text(encoding="utf-8"))
        for p in sorted(root.glob(f"*/*/{RUN_INFO_FILE}"))
        if not p.parent.name.startswith(TMP_PREFIX) and _within(root, p)
    ]
    if infos:
        return runs_table(infos)
    registry: dict[str, dict[str, Any]] = {}
    for csv_path in sorted((root / REGISTRY_DIR).glob("*.csv")):
        with open(csv_path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                run_id = row.get("experiment_id") or row.get("run_id")
                if run_id:
                    registry[run_id] = {k: (v if v != "" else None) for k, v in row.items()}
    rows = []
    for group, run_id, _ in _run_dirs(root):
        meta = registry.get(run_id, {})
        kind = meta.get("control_or_fault") or ("normal" if "fault" not in group else "fault")
        family = meta.get("fault_family") or (group.split("_")[0] if group.endswith("_fault") else None)
        strength = group.split("_")[1] if group.endswith("_fault") else None
        rows.append(
            {
                "run_id": run_id,
                "group": group,
                "task_group": meta.get("task_group"),
                "control_or_fault": kind,
                "fault_family": family,
                "fault_type": meta.get("fault_type"),
                "fault_strength": strength if kind == "fault" else None,
                "onset_step": 1,
                **{
                    f"registry.{k}": v
                    for k, v in meta.items()
                    if k not in ("experiment_id", "control_or_fault", "fault_family", "fault_type", "task_group")
                },
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def _parquet_paths(root: Path, name: str) -> list[Path]:
    return [
        p for p in sorted(root.glob(f"*/*/{name}")) if not p.parent.name.startswith(TMP_PREFIX) and _within(root, p)
    ]


def _concat_parquet(paths: list[Path]) -> pl.DataFrame:
    """Read many per-run Parquet files: one multi-threaded scan when their schemas agree,
    else a diagonal concat that keeps every column any file has."""
    try:
        return pl.scan_parquet(paths, missing_columns="insert").collect()
    except (pl.exceptions.PolarsError, ValueError):
        return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def load_benchmark(root: str | Path, trajectories: bool = True) -> Benchmark:
    """Load a benchmark directory (ours or the published layout) into DataFrames."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark directory {root} does not exist")
    report = LoadReport()
    runs = load_runs(root)
    step_parquet = _parquet_paths(root, "steps.parquet")
    if step_parquet and len(step_parquet) == len(runs):
        steps = _concat_parquet(step_parquet)
        trajs = _concat_parquet(_parquet_paths(root, "trajectories.parquet")) if trajectories else None
        report.files_read = len(step_parquet) * (2 if trajectories else 1)
        return Benchmark(root, runs, steps.sort("run_id", "step"), trajs, report)
    step_rows, traj_rows = [], []
    for _, run_id, sub in _run_dirs(root, report):
        for i, obj in enumerate(_read_jsonl(sub / STEP_FILE, report)):
            row = _clean_row(obj, STEP_ALIASES, _STEP_KNOWN, report)
            if row is None:
                continue
            row.setdefault("run_id", run_id)
            row["run_id"] = row["run_id"] or run_id
            if row.get("step") is None:  # missing: the line's position
                row["step"] = i + 1
            step_rows.append(row)
        if trajectories and (sub / TRAJ_FILE).exists():
            for obj in _read_jsonl(sub / TRAJ_FILE, report):
                row = _clean_row(obj, TRAJECTORY_ALIASES, _TRAJ_KNOWN, report)
                if row is None:
                    continue
                row["run_id"] = row.get("run_id") or run_id
                traj_rows.append(row)
    steps = _frame(step_rows, ("run_id", "step"))
    trajs = _frame(traj_rows, ("run_id", "rollout_step")) if trajectories else None
    return Benchmark(root, runs, steps, trajs, report)


def _frame(rows: list[dict[str, Any]], sort_by: tuple[str, ...]) -> pl.DataFrame:
    if not rows:  # keep the key columns, so consumers can select / join on them
        return pl.DataFrame(schema={sort_by[0]: pl.Utf8, **{c: pl.Int64 for c in sort_by[1:]}})
    frame = pl.DataFrame(rows, infer_schema_length=None, strict=False)
    if "active" in frame.columns:
        frame = frame.rename({"active": "fault_active"})
    elif "fault_injection_type" in frame.columns:  # published data: faults act from step 1
        frame = frame.with_columns(fault_active=pl.col("fault_injection_type").is_not_null())
    return frame.sort([c for c in sort_by if c in frame.columns])
