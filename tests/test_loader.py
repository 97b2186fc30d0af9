"""One loader reads the published layout (fixture) and our own generated layout."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from rftfm.io.faultbench import RunWriter, write_registries
from rftfm.io.loader import load_benchmark
from rftfm.records import FaultInjection, RunInfo, StepRecord, TrajectoryFlags, TrajectoryRecord

FIXTURE = Path(__file__).parent / "fixtures" / "published"


def test_published_layout_is_read_with_aliases_and_unknown_fields_kept() -> None:
    bench = load_benchmark(FIXTURE)
    runs = {r["run_id"]: r for r in bench.runs.to_dicts()}
    assert set(runs) == {"exp_0001", "exp_0007", "exp_0008"}
    assert runs["exp_0007"]["control_or_fault"] == "fault" and runs["exp_0007"]["fault_type"] == "reward_noise"
    assert runs["exp_0007"]["fault_strength"] == "hard"
    assert runs["exp_0008"]["control_or_fault"] == "control"
    assert runs["exp_0001"]["registry.base_model"] == "qwen-0.5b"  # unknown registry column kept

    steps = bench.steps
    assert steps.height == 9  # 3 runs x 3 steps; the truncated 4th line of exp_0007 is skipped
    assert bench.report.malformed_lines == 1
    row = steps.filter((pl.col("run_id") == "exp_0007") & (pl.col("step") == 2)).to_dicts()[0]
    assert row["reward_mean"] == pytest.approx(0.2)  # "reward" -> reward_mean
    assert row["grad_norm"] == pytest.approx(0.5)  # "actor_grad_norm" -> grad_norm
    assert row["completion_length_mean"] == pytest.approx(12.2)
    assert row["metrics.custom_probe"] == 2  # unknown metric kept
    assert row["fault_active"] is True
    assert steps.filter(pl.col("run_id") == "exp_0008")["fault_active"].to_list() == [False] * 3

    trajs = bench.trajectories
    assert trajs.height == 18
    assert {"advantage", "ret", "metrics.judge_score", "rollout_step", "empty_response"} <= set(trajs.columns)


def _records(run_id: str, n_steps: int) -> list[tuple[StepRecord, list[TrajectoryRecord]]]:
    label = FaultInjection(fault_injection_type="lr_high", fault_injection_strength="easy", active=True)
    out = []
    for step in range(1, n_steps + 1):
        rec = StepRecord(run_id=run_id, step=step, reward_mean=0.1 * step, kl=float("nan"), extra={"probe": 1.0},
                         fault_injection=label)
        trajs = [
            TrajectoryRecord(run_id=run_id, rollout_step=step, prompt_id=f"p{i}", group_id=i // 2,
                             reward=float(i % 2), response_length=3, advantage=0.5, ret=float(i % 2),
                             flags=TrajectoryFlags(truncated=i == 0), completion="<b>x</b>", fault_injection=label)
            for i in range(4)
        ]
        out.append((rec, trajs))
    return out


def test_our_layout_round_trips_through_writer_and_loader(tmp_path: Path) -> None:
    info = RunInfo(run_id="r1", group="od_easy_fault", task_group="arith_a", model_size="xs", seed=1,
                   control_or_fault="fault", fault_family="od", fault_type="lr_high", fault_strength="easy",
                   onset_step=1)
    writer = RunWriter(tmp_path, info)
    for rec, trajs in _records("r1", 3):
        writer(rec, trajs)
    writer.commit()
    write_registries(tmp_path, [info])
    assert (tmp_path / "metadata" / "registries" / "od_easy_fault.csv").read_text().startswith(
        "experiment_id,control_or_fault,fault_family,fault_type,task_group")
    bench = load_benchmark(tmp_path)
    assert bench.runs["fault_type"].to_list() == ["lr_high"]
    assert bench.steps["reward_mean"].to_list() == pytest.approx([0.1, 0.2, 0.3])
    assert bench.steps["kl"].null_count() == 3  # NaN is stored as missing, not as a number
    assert bench.steps["extra.probe"].to_list() == [1.0, 1.0, 1.0]
    assert bench.trajectories.height == 12 and bench.trajectories["truncated"].sum() == 3


def test_unfinished_run_is_invisible_and_rewritten(tmp_path: Path) -> None:
    info = RunInfo(run_id="r2", group="normal", task_group="arith_a", control_or_fault="normal")
    writer = RunWriter(tmp_path, info)
    for rec, trajs in _records("r2", 2):
        writer(rec, trajs)
    # killed here: nothing committed
    assert load_benchmark(tmp_path).runs.height == 0
    again = RunWriter(tmp_path, info)  # a resumed attempt discards the leftovers
    for rec, trajs in _records("r2", 2):
        again(rec, trajs)
    again.commit()
    bench = load_benchmark(tmp_path)
    assert bench.runs.height == 1 and bench.steps.height == 2
    assert not list(tmp_path.glob("normal/.tmp-*"))


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_benchmark(tmp_path / "nope")
