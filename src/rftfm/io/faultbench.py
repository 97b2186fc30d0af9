"""RFT-FaultBench on-disk layout: the published JSONL layout, written and read.

Layout (the published dataset's, plus our extras)::

    <root>/<group>/<run_id>/<sub>/openrlhf_train_train_step.jsonl   one object per step
    <root>/<group>/<run_id>/<sub>/openrlhf_train_trajectory.jsonl   one object per trajectory
    <root>/<group>/<run_id>/run_info.json                           our full RunInfo (extra)
    <root>/<group>/<run_id>/{steps,trajectories}.parquet            compact copy (extra)
    <root>/metadata/registries/<group>.csv                          one row per run

A run directory appears under its final name only once it is complete (written under a
temporary name, then renamed), so a killed run is never mistaken for a finished one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from rftfm.records import RunInfo, StepRecord, TrajectoryRecord, finite_or_none

STEP_FILE = "openrlhf_train_train_step.jsonl"
TRAJ_FILE = "openrlhf_train_trajectory.jsonl"
RUN_INFO_FILE = "run_info.json"
SUB_DIR = "train"
REGISTRY_DIR = Path("metadata") / "registries"
REGISTRY_COLUMNS = ["experiment_id", "control_or_fault", "fault_family", "fault_type", "task_group"]
TMP_PREFIX = ".tmp-"

_TRAJ_METRICS = (
    "reward",
    "response_length",
    "repetition_ratio",
    "unique_token_ratio",
    "tool_call_count",
    "tool_error_count",
)


def step_to_published(record: StepRecord) -> dict[str, Any]:
    metrics = record.model_dump(exclude={"schema_version", "run_id", "step", "extra", "fault_injection"})
    metrics.update(record.extra)
    return {
        "step": record.step,
        "run_id": record.run_id,
        "metrics": metrics,
        "metadata": {
            "fault_injection": _fault_metadata(record.fault_injection),
            "schema_version": record.schema_version,
        },
    }


def trajectory_to_published(record: TrajectoryRecord) -> dict[str, Any]:
    metrics = {name: getattr(record, name) for name in _TRAJ_METRICS}
    metrics.update({"advantage_mean": record.advantage, "advantage_std": 0.0, "return": record.ret})
    return {
        "metrics": metrics,
        "flags": record.flags.model_dump(),
        "metadata": {
            "run_id": record.run_id,
            "rollout_step": record.rollout_step,
            "prompt_id": record.prompt_id,
            "group_id": record.group_id,
            "fault_injection": _fault_metadata(record.fault_injection),
            "schema_version": record.schema_version,
        },
        "completion": record.completion,
        **({"extra": record.extra} if record.extra else {}),
    }


def _fault_metadata(label: Any) -> dict[str, Any]:
    if label is None:
        return {"fault_injection_type": None, "fault_injection_strength": None, "active": False}
    return label.model_dump()


def _json_line(obj: dict[str, Any]) -> str:
    # NaN / inf are not JSON; they are written as null (missing), never as invalid JSON.
    return json.dumps(_finite(obj), separators=(",", ":")) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def run_dir(root: Path, info: RunInfo) -> Path:
    """``<root>/<group>/<run_id>``; refuses a group or run id that is not a plain name (path traversal)."""
    for what, name in (("group", info.group), ("run_id", info.run_id)):
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"{what} {name!r} is not a plain directory name; refusing a path outside {root}")
    return Path(root) / info.group / info.run_id


class RunWriter:
    """Streams one run's records into a temporary directory; :meth:`commit` publishes it atomically."""

    def __init__(self, root: Path, info: RunInfo):
        self.root, self.info = Path(root), info
        self.final_dir = run_dir(self.root, info)
        self.tmp_dir = self.root / info.group / f"{TMP_PREFIX}{info.run_id}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # leftovers of a killed attempt
        (self.tmp_dir / SUB_DIR).mkdir(parents=True)
        self._steps = open(self.tmp_dir / SUB_DIR / STEP_FILE, "w", encoding="utf-8")
        self._trajs = open(self.tmp_dir / SUB_DIR / TRAJ_FILE, "w", encoding="utf-8")
        self.step_rows: list[dict[str, Any]] = []
        self.traj_rows: list[dict[str, Any]] = []

    def __call__(self, step: StepRecord, trajectories: list[TrajectoryRecord]) -> None:
        """A step sink: append one step and its trajectories."""
        self._steps.write(_json_line(step_to_published(step)))
        self._trajs.writelines(_json_line(trajectory_to_published(t)) for t in trajectories)
        self.step_rows.append(flatten_step(step))
        self.traj_rows.extend(flatten_trajectory(t) for t in trajectories)

    def commit(self) -> Path:
        for handle in (self._steps, self._trajs):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        write_parquet(self.tmp_dir / "steps.parquet", self.step_rows)
        write_parquet(self.tmp_dir / "trajectories.parquet", self.traj_rows)
        (self.tmp_dir / RUN_INFO_FILE).write_text(self.info.model_dump_json(indent=1), encoding="utf-8")
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        os.replace(self.tmp_dir, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        for handle in (self._steps, self._trajs):
            handle.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def flatten_step(record: StepRecord) -> dict[str, Any]:
    row = record.model_dump(exclude={"extra", "fault_injection"})
    row.update({f"extra.{k}": v for k, v in record.extra.items()})
    label = record.fault_injection
    row["fault_active"] = bool(label and label.active)
    return _finite(row)


def flatten_trajectory(record: TrajectoryRecord) -> dict[str, Any]:
    row = record.model_dump(exclude={"flags", "extra", "fault_injection", "completion"}, by_alias=False)
    row.update(record.flags.model_dump())
    row["completion"] = record.completion
    label = record.fault_injection
    row["fault_active"] = bool(label and label.active)
    return _finite(row)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(path, compression="zstd")


def is_finished(root: Path, info: RunInfo) -> bool:
    return (run_dir(root, info) / RUN_INFO_FILE).exists()


def finished_runs(root: Path) -> list[RunInfo]:
    """Every complete run under ``root`` (temporary leftovers are ignored)."""
    runs = []
    for path in sorted(Path(root).glob(f"*/*/{RUN_INFO_FILE}")):
        if path.parent.name.startswith(TMP_PREFIX):
            continue
        runs.append(RunInfo.model_validate_json(path.read_text(encoding="utf-8")))
    return runs


def write_registries(root: Path, runs: Iterable[RunInfo]) -> list[Path]:
    """``metadata/registries/<group>.csv``: the published columns, then ours."""
    by_group: dict[str, list[RunInfo]] = {}
    for info in runs:
        by_group.setdefault(info.group, []).append(info)
    out_dir = Path(root) / REGISTRY_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    extra_cols = ["group", "fault_strength", "model_size", "seed", "onset_step", "num_steps"]
    paths = []
    for group, infos in sorted(by_group.items()):
        path = out_dir / f"{group}.csv"
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REGISTRY_COLUMNS + extra_cols)
            for info in sorted(infos, key=lambda i: i.run_id):
                writer.writerow(
                    [
                        info.run_id,
                        info.control_or_fault,
                        info.fault_family or "",
                        info.fault_type or "",
                        info.task_group,
                    ]
                    + ["" if getattr(info, c) is None else getattr(info, c) for c in extra_cols]
                )
        os.replace(tmp, path)
        paths.append(path)
    return paths
