"""Generate RFT-FaultBench: train every run of a preset and write it in the published layout.

Resumable: finished runs (final directory with ``run_info.json``) are skipped; a run killed
half-way leaves only a ``.tmp-`` directory, which is discarded and redone. Work runs on a
local process pool (default, one single-threaded torch process per core) or on a Ray
cluster; both execute the same :func:`execute_run`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from rftfm.bench.pool import run_in_pool
from rftfm.io.faultbench import RunWriter, finished_runs, is_finished, write_registries
from rftfm.records import RunInfo


@dataclass
class RunSummary:
    run_id: str
    steps: int
    trajectories: int
    seconds: float
    error: str | None = None  # the exception that stopped the run (then nothing was published)


def _single_thread() -> None:
    import torch

    from rftfm.bench.runner import quiet

    quiet()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def execute_run(root: str, info_json: str) -> RunSummary:
    """Train one run and publish it under ``root`` (atomic); safe to call in any worker."""
    from rftfm.bench.runner import train_run

    _single_thread()
    info = RunInfo.model_validate_json(info_json)
    start = time.perf_counter()
    writer = RunWriter(Path(root), info)
    try:
        train_run(info, sinks=[writer])
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return RunSummary(info.run_id, len(writer.step_rows), len(writer.traj_rows), time.perf_counter() - start)


def execute_run_or_report(root: str, info_json: str) -> RunSummary:
    """:func:`execute_run`, but a run that raises is reported, not fatal: one bad run must not stop a
    generation of hours (it stays unpublished, so the next invocation tries it again)."""
    start = time.perf_counter()
    try:
        return execute_run(root, info_json)
    except Exception as exc:  # noqa: BLE001  (reported in metadata/failed_runs.jsonl)
        run_id = RunInfo.model_validate_json(info_json).run_id
        return RunSummary(run_id, 0, 0, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")


def warm_start(task: str, size: str, family: str = "gpt2") -> str:
    """Build (or reuse) the cached SFT policy for (task, size, family)."""
    from rftfm.engine.sft import load_warm_start

    _single_thread()
    load_warm_start(task, size, family)
    return f"{family}-{task}-{size}"


def pending_runs(root: Path, runs: Iterable[RunInfo]) -> list[RunInfo]:
    return [r for r in runs if not is_finished(root, r)]


ProgressFn = Callable[[RunSummary], None]


def generate(
    root: Path,
    runs: list[RunInfo],
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    on_done: ProgressFn | None = None,
) -> list[RunSummary]:
    """Generate every unfinished run of ``runs`` under ``root``; returns summaries of the new ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = pending_runs(root, runs)
    start = time.time()
    configs = sorted({(r.task_group, r.model_size or "xs", r.model_family or "gpt2") for r in todo})
    if executor == "local":
        summaries = _run_local(root, todo, configs, workers or os.cpu_count() or 1, on_done)
    elif executor == "ray":
        summaries = _run_ray(root, todo, configs, address, on_done)
    else:
        raise ValueError(f"unknown executor {executor!r}; use 'local' or 'ray'")
    finished = finished_runs(root)
    write_registries(root, finished)
    write_configurations(root, finished)
    failed = [s for s in summaries if s.error]
    _log_failures(root, failed)
    done = [s for s in summaries if not s.error]
    _log_session(root, start, executor, done, failed=len(failed))
    return done


def write_configurations(root: Path, runs: list[RunInfo]) -> Path:
    """``metadata/configurations.csv``: one row per run with every configuration axis of its RunInfo
    (the registries keep the published columns)."""
    import csv

    columns = [name for name in RunInfo.model_fields if name not in ("extra", "schema_version")]
    path = Path(root) / "metadata" / "configurations.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for info in sorted(runs, key=lambda i: (i.group, i.run_id)):
            writer.writerow(["" if getattr(info, c) is None else getattr(info, c) for c in columns])
    os.replace(tmp, path)
    return path


def _log_failures(root: Path, failed: list[RunSummary]) -> None:
    if not failed:
        return
    path = root / "metadata" / "failed_runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for s in failed:
            entry = {"run_id": s.run_id, "error": s.error, "seconds": s.seconds, "at": time.time()}
            handle.write(json.dumps(entry) + "\n")


def _log_session(root: Path, start: float, executor: str, summaries: list[RunSummary], failed: int = 0) -> None:
    """Append this invocation's wall time to ``metadata/generation_log.jsonl`` (resumed runs add up)."""
    entry = {
        "started": start, "wall_s": time.time() - start, "executor": executor, "cpus": os.cpu_count(),
        "runs": len(summaries), "steps": sum(s.steps for s in summaries),
        "trajectories": sum(s.trajectories for s in summaries), "failed": failed,
    }
    path = root / "metadata" / "generation_log.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def _run_local(root: Path, todo: list[RunInfo], configs, workers: int, on_done: ProgressFn | None) -> list[RunSummary]:
    summaries: list[RunSummary] = []
    tasks = [(str(root), r.model_dump_json()) for r in todo]
    for summary in run_in_pool(execute_run_or_report, tasks, workers, warmup=(warm_start, list(configs))):
        summaries.append(summary)
        if on_done:
            on_done(summary)
    return summaries


def _run_ray(root: Path, todo: list[RunInfo], configs, address: str | None, on_done: ProgressFn | None) -> list[RunSummary]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote_warm = ray.remote(num_cpus=1)(warm_start)
        remote_run = ray.remote(num_cpus=1, max_retries=2)(execute_run_or_report)
        ray.get([remote_warm.remote(t, s, f) for t, s, f in configs])
        pending = [remote_run.remote(str(root), r.model_dump_json()) for r in todo]
        summaries: list[RunSummary] = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            summary = ray.get(done[0])
            summaries.append(summary)
            if on_done:
                on_done(summary)
        return summaries
    finally:
        if started_here:
            ray.shutdown()
