"""Benchmark generation: published layout, resumable, local pool and Ray executors."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from rftfm.bench.generate import generate, pending_runs
from rftfm.bench.presets import preset_runs
from rftfm.bench.stats import benchmark_stats
from rftfm.engine.model import MODEL_FAMILIES, SIZES
from rftfm.engine.tasks import TASK_GROUPS
from rftfm.faults.taxonomy import FAULT_TYPES, PUBLISHED_TYPES, STRENGTHS, WILD_TYPES
from rftfm.io.faultbench import STEP_FILE, SUB_DIR, TRAJ_FILE
from rftfm.io.loader import load_runs, runs_table
from rftfm.records import RunInfo


def tiny_run(run_id: str, fault: str | None = None, group: str = "normal", seed: int = 1) -> RunInfo:
    kind = "fault" if fault else "normal"
    return RunInfo(
        run_id=run_id, group=group, task_group="arith_a", model_size="xs", seed=seed, num_steps=3,
        prompts_per_step=2, num_generations=4, control_or_fault=kind, fault_type=fault,
        fault_family=FAULT_TYPES[fault].family if fault else None, fault_strength="easy" if fault else None,
        onset_step=1,
    )


def _balanced_labels(runs: list[RunInfo]) -> None:
    faulty = [r for r in runs if r.control_or_fault == "fault"]
    controls = [r for r in runs if r.control_or_fault == "control"]
    assert len(controls) == len([r for r in faulty if r.fault_strength == "hard"])
    assert all(c.group.endswith("_hard_fault") for c in controls)
    hard = {(r.config_id, r.onset_step, r.group) for r in faulty if r.fault_strength == "hard"}
    assert {(c.config_id, c.onset_step, c.group) for c in controls} <= hard  # a control beside its hard fault
    assert {r.config_id for r in runs if r.control_or_fault == "normal"} >= {r.config_id for r in faulty}
    assert len({r.seed for r in runs}) == len(runs)  # every run has its own seed
    for r in faulty:
        assert FAULT_TYPES[r.fault_type].applies_to(r.task_group, r.beta), r.run_id


def test_mini_preset_covers_every_task_model_regime_type_strength_with_controls_and_normal_runs() -> None:
    runs = preset_runs("mini")
    faulty = {(r.fault_type, r.fault_strength) for r in runs if r.control_or_fault == "fault"}
    assert faulty == {(t, s) for t in FAULT_TYPES for s in STRENGTHS} and set(WILD_TYPES) <= {t for t, _ in faulty}
    assert {r.task_group for r in runs} == set(TASK_GROUPS) and len(TASK_GROUPS) >= 8
    assert {r.model_family for r in runs} == set(MODEL_FAMILIES) and {r.model_size for r in runs} == set(SIZES)
    assert {r.beta == 0 for r in runs} == {True, False}
    onsets = {r.onset_step for r in runs if r.control_or_fault == "fault"}
    assert 1 in onsets and len(onsets) > 1
    _balanced_labels(runs)
    assert len(runs) <= 80 and max(r.num_steps for r in runs) <= 10  # small: tests and a quick look


def test_full_preset_spans_the_configuration_space_at_scale() -> None:
    runs = preset_runs("full")
    assert len(runs) >= 1_200 and len({r.config_id for r in runs}) >= 40
    assert sum(r.control_or_fault == "normal" for r in runs) >= 150
    assert sum(r.num_steps // r.logging_steps for r in runs) >= 40_000  # step records (one per logging step)
    assert sum(r.num_steps * r.prompts_per_step * r.num_generations for r in runs) >= 1_500_000
    assert min(r.num_steps for r in runs) <= 20 and max(r.num_steps for r in runs) >= 200
    lrs = [r.learning_rate for r in runs]
    assert math.log10(max(lrs) / min(lrs)) >= 1.4
    assert {r.lr_scheduler for r in runs} == {"constant", "linear", "cosine"}
    assert {r.loss_type for r in runs} == {"grpo", "dr_grpo", "dapo", "bnpo"}
    assert {r.logging_steps for r in runs} >= {1, 2} and {r.num_generations for r in runs} >= {4, 16}
    mid = [(r.onset_step - 1) / r.num_steps for r in runs if r.control_or_fault == "fault" and r.onset_step > 1]
    assert min(mid) < 0.3 and max(mid) > 0.6  # mid-run onsets spread over the run
    _balanced_labels(runs)
    assert len(preset_runs("wide")) >= 10_000


def test_classic_presets_are_the_published_configuration_unchanged() -> None:
    """The remediation evaluation and the demo were measured on these runs: they must not move."""
    for name, digest, count in (("classic-mini", "5691769419f1132d", 54), ("classic", "1fb90182d8fab8e5", 1200)):
        runs = preset_runs(name)
        rows = [(r.run_id, r.seed, r.task_group, r.model_size, r.onset_step, r.num_steps, r.control_or_fault,
                 r.fault_type, r.fault_strength, r.group) for r in runs]
        assert len(runs) == count and hashlib.sha256(repr(rows).encode()).hexdigest()[:16] == digest, name
        assert {(r.learning_rate, r.beta, r.prompts_per_step, r.num_generations, r.model_family, r.logging_steps)
                for r in runs} == {(3e-4, 0.04, 8, 8, "gpt2", 1)}
        assert all(t in PUBLISHED_TYPES for t in {r.fault_type for r in runs} - {None})


def test_generation_writes_layout_and_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    runs = [tiny_run("a", seed=1), tiny_run("b", "lr_high", group="od_easy_fault", seed=2)]
    done = generate(tmp_path, runs, workers=1)
    assert sorted(s.run_id for s in done) == ["a", "b"]
    step_file = tmp_path / "od_easy_fault" / "b" / SUB_DIR / STEP_FILE
    lines = [json.loads(x) for x in step_file.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and "reward_mean" in lines[0]["metrics"]
    traj = json.loads((tmp_path / "od_easy_fault" / "b" / SUB_DIR / TRAJ_FILE).read_text().splitlines()[0])
    assert traj["metadata"]["fault_injection"]["fault_injection_type"] == "lr_high"
    assert {"flags", "metrics", "metadata"} <= set(traj)

    # a run killed half-way leaves a .tmp- directory: it is not finished, and gets redone
    killed = tiny_run("c", seed=3)
    (tmp_path / "normal" / ".tmp-c" / SUB_DIR).mkdir(parents=True)
    (tmp_path / "normal" / ".tmp-c" / SUB_DIR / STEP_FILE).write_text('{"step": 1, "metr')
    assert [r.run_id for r in pending_runs(tmp_path, runs + [killed])] == ["c"]
    again = generate(tmp_path, runs + [killed], workers=1)
    assert [s.run_id for s in again] == ["c"]
    assert not (tmp_path / "normal" / ".tmp-c").exists()
    stats = benchmark_stats(tmp_path)
    assert stats["totals"] == {"runs": 3, "steps": 9, "trajectories": 72}
    log = (tmp_path / "metadata" / "generation_log.jsonl").read_text().splitlines()
    assert len(log) == 2 and json.loads(log[1])["runs"] == 1
    # the runs table of generated data is the one built from the runs' own RunInfo (what
    # `bench evaluate remediation --preset` uses instead of generated data)
    assert load_runs(tmp_path).sort("run_id").to_dicts() == runs_table(runs + [killed]).sort("run_id").to_dicts()


def test_ray_executor_runs_the_same_work_on_a_local_ray_instance(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        done = generate(tmp_path, [tiny_run("r", "reward_noise", group="rf_easy_fault", seed=5)], executor="ray")
    finally:
        ray.shutdown()
    assert [s.run_id for s in done] == ["r"] and done[0].steps == 3 and done[0].trajectories == 24
    assert (tmp_path / "rf_easy_fault" / "r" / "run_info.json").exists()
    assert (tmp_path / "metadata" / "registries" / "rf_easy_fault.csv").exists()


def test_spare_prompts_leave_the_planned_batches_unchanged() -> None:
    """A run that is never extended trains on exactly TRL's batches; a replay reaches the spare prompts."""
    from trl.trainer.utils import RepeatSampler

    from rftfm.engine.trainer import PlannedThenSpare

    def sampler(n: int) -> RepeatSampler:
        return RepeatSampler(range(n), mini_repeat_count=4, batch_size=3, repeat_count=1, shuffle=True, seed=7)

    chained = list(PlannedThenSpare(sampler(12), sampler(6), offset=12))
    assert chained[:48] == list(sampler(12))
    assert sorted(set(chained[48:])) == list(range(12, 18))
    assert len(chained) == 72 == len(PlannedThenSpare(sampler(12), sampler(6), 12))



def test_batch_replay_hands_out_the_planned_order_delayed_by_each_rollback() -> None:
    from rftfm.engine.trainer import BatchReplay

    replay, fresh, trained = BatchReplay(memory=8), iter(range(1, 100)), []
    for step in range(1, 13):
        trained.append(replay.next(next(fresh)))
        if step == 5:
            assert replay.rewind(2) == 2  # a rollback discarding steps 4 and 5
        if step == 8:
            assert replay.rewind(3) == 3  # another one, while the first replay is still going on
    # 4 5 discarded and trained again; then 4 5 6 discarded (back to the same checkpoint) and again
    assert trained == [1, 2, 3, 4, 5, 4, 5, 6, 4, 5, 6, 7]
    # the effective run is the planned order; the batches the data loader gave meanwhile wait their turn
    assert list(replay.recent) == [1, 2, 3, 4, 5, 6, 7] and list(replay.queue) == [8, 9, 10, 11, 12]
    assert BatchReplay(memory=2).rewind(5) == 0  # nothing remembered yet


def test_bench_list_prints_the_generation_order():
    import random

    from typer.testing import CliRunner

    from rftfm.bench.presets import preset_runs
    from rftfm.cli import app

    ids = [r.run_id for r in preset_runs("mini")]
    out = CliRunner().invoke(app, ["bench", "list", "--preset", "mini"])
    assert out.exit_code == 0 and out.output.split() == ids
    random.Random(3).shuffle(ids)
    args = ["bench", "list", "--preset", "mini", "--shuffle", "3", "--skip", "10", "--limit", "5"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0 and out.output.split() == ids[10:15]
