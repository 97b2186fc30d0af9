"""rftfm watch: exit codes, incidents, following a live file, and an end-to-end run with a mid-run fault."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner
from watch_fixtures import train_real_run, write_jsonl

from rftfm.cli import app
from rftfm.cli.watch import EXIT_ALARM, EXIT_BAD_INPUT, EXIT_NO_DETECTION, EXIT_OK
from rftfm.fm.features import HISTORY_SCHEMA
from rftfm.fm.incidents import IncidentStore
from rftfm.fm.monitor import RunMonitor
from rftfm.fm.types import Alarm, Diagnosis, Hypothesis, SignalEvidence
from rftfm.integrations.trl_log import JsonlLogCallback, WatchCallback
from rftfm.records import RunInfo, StepRecord

runner = CliRunner()


class KlDetector:
    """A stand-in detector: alarms while KL exceeds a level (the real detector has its own tests, test_detect.py)."""

    def __init__(self, level: float) -> None:
        self.level, self.resets = level, []

    def reset(self, run_id, task_group=None, model_size=None):
        self.resets.append(run_id)

    def observe(self, step: StepRecord, trajectories):
        if step.kl is not None and step.kl > self.level:
            return Alarm(
                run_id=step.run_id,
                step=step.step,
                score=step.kl,
                threshold=self.level,
                evidence=[SignalEvidence(signal="kl", direction="up", value=step.kl)],
            )
        return None


class RecordingDiagnoser:
    def __init__(self) -> None:
        self.histories: list[pl.DataFrame] = []

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        self.histories.append(history)
        return Diagnosis(
            run_id=run_id,
            step=step,
            ranked=[Hypothesis(family="od", fault_type="lr_high", probability=0.9)],
            summary="lr_high <b>",
        )


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return train_real_run(tmp_path_factory.mktemp("watch"), run_id="watch-run", num_steps=6)


def use_monitor(monkeypatch, detector, diagnoser=None):
    monkeypatch.setattr(
        "rftfm.cli.watch.load_detector", lambda path=None: (detector, None if detector else "detection disabled: test")
    )
    monkeypatch.setattr(
        "rftfm.cli.watch.load_diagnoser",
        lambda path=None: (diagnoser, None if diagnoser else "diagnosis disabled: test"),
    )


def test_monitor_passes_history_features_and_records(real_run, tmp_path):
    from rftfm.io.adapters import read_log

    events, _ = read_log(real_run.run_dir)
    level = sorted(s.kl for s, _ in events)[-3]  # the last steps (largest KL) alarm
    diagnoser = RecordingDiagnoser()
    with IncidentStore(tmp_path / "inc.db") as store:
        monitor = RunMonitor("watch-run", KlDetector(level), diagnoser, store, rediagnose_every=1)
        for step, trajs in events:
            monitor.observe(step, trajs)
        alarms = store.events(kind="alarm")
        assert len(alarms) == len(monitor.result.alarms) == 2
        assert len(store.events(kind="diagnosis")) == 2
        history = diagnoser.histories[0]
        assert history.columns == list(HISTORY_SCHEMA)  # features, learning rate, reward functions' means
        assert history["step"].max() == alarms[0]["step"]  # steps <= alarm step only
        assert history["traj_reward_mean"].null_count() == 0  # trajectory features from the layout


def test_monitor_survives_a_crashing_detector(tmp_path):
    class Broken:
        def reset(self, *a, **k):
            pass

        def observe(self, step, trajs):
            raise RuntimeError("model file corrupt")

    with IncidentStore(tmp_path / "inc.db") as store:
        monitor = RunMonitor("r", Broken(), None, store)
        for i in range(1, 4):
            assert monitor.observe(StepRecord(run_id="r", step=i, kl=0.1), []) == (None, None)
        assert len(store.events(kind="error")) == 3
        assert monitor.result.steps == 3


def test_exit_codes(real_run, tmp_path, monkeypatch):
    use_monitor(monkeypatch, None)
    result = runner.invoke(app, ["watch", str(real_run.trl_jsonl)])
    assert result.exit_code == EXIT_NO_DETECTION, result.output
    assert "detection disabled" in result.output
    use_monitor(monkeypatch, KlDetector(1e9))
    assert runner.invoke(app, ["watch", str(real_run.trl_jsonl)]).exit_code == EXIT_OK
    use_monitor(monkeypatch, KlDetector(-1.0), RecordingDiagnoser())
    result = runner.invoke(app, ["watch", str(real_run.run_dir), "--incidents", str(tmp_path / "i.db")])
    assert result.exit_code == EXIT_ALARM, result.output
    assert "ALARM" in result.output and "lr_high" in result.output
    assert runner.invoke(app, ["watch", str(tmp_path / "missing.jsonl")]).exit_code == EXIT_BAD_INPUT
    assert runner.invoke(app, ["watch", str(real_run.trl_jsonl), "--format", "tensorboard"]).exit_code == EXIT_BAD_INPUT
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not a log\n")
    assert runner.invoke(app, ["watch", str(empty)]).exit_code == EXIT_BAD_INPUT
    assert runner.invoke(app, ["watch", str(tmp_path)]).exit_code == EXIT_BAD_INPUT  # a directory with no log
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    result = runner.invoke(app, ["watch", str(real_run.trl_jsonl), "--incidents", str(corrupt)])
    assert result.exit_code == EXIT_BAD_INPUT and "cannot open the incident store" in result.output


def test_watch_records_incidents_for_the_report(real_run, tmp_path, monkeypatch):
    use_monitor(monkeypatch, KlDetector(-1.0), RecordingDiagnoser())
    db = tmp_path / "inc.db"
    summary = tmp_path / "summary.json"
    result = runner.invoke(
        app, ["watch", str(real_run.trl_jsonl), "--incidents", str(db), "--run-id", "job-7", "--json", str(summary)]
    )
    assert result.exit_code == EXIT_ALARM
    doc = json.loads(summary.read_text())
    assert doc["first_alarm_step"] == 1 and doc["alarms"] == 6 and doc["exit_code"] == EXIT_ALARM
    assert doc["diagnosis"]["fault_type"] == "lr_high" and doc["format"] == "trl"
    assert doc["episode_count"] == 1 and doc["episodes"][0]["start_step"] == 1 and doc["episodes"][0]["open"]
    assert doc["metrics"]["reward_mean"]["source"] == "reward" and doc["metrics"]["reward_mean"]["missing"] == 0
    with IncidentStore(db) as store:
        kinds = [e["kind"] for e in store.events(run_id="job-7")]
        runs = store.events(run_id="job-7", kind="run")
    assert kinds.count("alarm") == 6
    with IncidentStore(db) as store:  # diagnosed when the episode starts, then every 5th alarmed step
        assert [e["step"] for e in store.events(run_id="job-7", kind="diagnosis")] == [1, 6]
    assert runs[0]["payload"]["source"] == str(real_run.trl_jsonl.resolve())
    assert runs[-1]["payload"]["steps"] == 6


def test_wandb_alerts_are_forwarded_when_available(real_run, monkeypatch):
    sent = []

    class FakeWandb:
        run = object()  # an active run in this process
        AlertLevel = type("AlertLevel", (), {"WARN": "WARN"})

        @staticmethod
        def alert(title, text, level):
            sent.append((title, text, level))

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    monkeypatch.setattr("rftfm.integrations.wandb_alerts.wandb_available", lambda: True)
    use_monitor(monkeypatch, KlDetector(-1.0), RecordingDiagnoser())
    result = runner.invoke(app, ["watch", str(real_run.trl_jsonl), "--wandb"])
    assert result.exit_code == EXIT_ALARM
    assert len(sent) == 1  # one alert per alarm episode / new diagnosis, not one per step
    assert "from step 1" in sent[0][0] and "lr_high" in sent[0][1]


def test_wandb_missing_is_not_an_error(real_run, monkeypatch):
    monkeypatch.setattr("rftfm.integrations.wandb_alerts.wandb_available", lambda: False)
    use_monitor(monkeypatch, KlDetector(-1.0))
    result = runner.invoke(app, ["watch", str(real_run.trl_jsonl), "--wandb"])
    assert result.exit_code == EXIT_ALARM
    assert "wandb is not installed" in result.output


def test_follow_a_file_being_appended(real_run, tmp_path, monkeypatch):
    """A writer thread appends TRL on_log lines in pieces, rotates the file once; watch --follow sees every step."""
    lines = real_run.trl_jsonl.read_text().splitlines(keepends=True)
    live = tmp_path / "live.jsonl"
    live.write_text("")

    def writer() -> None:
        for i, line in enumerate(lines):
            if i == 3:  # log rotation half-way through
                live.rename(tmp_path / "live.jsonl.1")
                live.write_text("")
            half = len(line) // 2
            for piece in (line[:half], line[half:]):
                with open(live, "a") as f:
                    f.write(piece)
                time.sleep(0.05)

    use_monitor(monkeypatch, KlDetector(1e9))
    thread = threading.Thread(target=writer)
    thread.start()
    db = tmp_path / "inc.db"
    result = runner.invoke(
        app, ["watch", str(live), "--follow", "--interval", "0.02", "--idle-timeout", "5", "--incidents", str(db)]
    )
    thread.join()
    assert result.exit_code == EXIT_OK, result.output
    assert "6 step(s) [JSONL of metric dicts (TRL keys)]" in result.output
    with IncidentStore(db) as store:
        assert store.events(kind="run")[-1]["payload"]["steps"] == 6


# --- end to end: a real TRL run with a mid-run fault, watched live from another process -----------


def _detector_artifact(tmp_path: Path) -> Path | None:
    """The packaged detector when it exists, else one fitted here on a few short normal runs."""
    try:
        from rftfm.fm.detect import Detector

        Detector.load_default()
        return None
    except Exception:  # no packaged artifact yet (or an unreadable one): fit a small one here
        pass
    from rftfm.fm.features import features_frame
    from rftfm.io.loader import load_benchmark

    for seed in range(4):
        train_real_run(tmp_path / "normal", run_id=f"normal-{seed}", num_steps=E2E_STEPS, seed=10 + seed)
    bench = load_benchmark(tmp_path / "normal" / "bench")
    detector = Detector().fit(bench.runs, features_frame(bench.steps, bench.trajectories))
    path = tmp_path / "detector.json"
    detector.save(path)
    return path


E2E_STEPS = 16
E2E_ONSET = 6


def test_watch_raises_the_alarm_while_a_faulty_trl_run_is_training(tmp_path):
    torch.set_num_threads(1)
    pytest.importorskip("rftfm.fm.detect")
    artifact = _detector_artifact(tmp_path)
    log, db = tmp_path / "live-trl.jsonl", tmp_path / "incidents.db"
    cmd = [
        sys.executable,
        "-m",
        "rftfm.cli",
        "watch",
        str(log),
        "--format",
        "trl",
        "--follow",
        "--interval",
        "0.1",
        "--idle-timeout",
        "60",
        "--incidents",
        str(db),
        "--run-id",
        "live-run",
        "--task-group",
        "arith_a",
        "--model-size",
        "xs",
    ]
    if artifact is not None:
        cmd += ["--detector", str(artifact)]
    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watcher.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 120
    while not any("rftfm watch:" in line for line in lines) and time.time() < deadline:
        time.sleep(0.1)  # the watcher is ready (detector and diagnoser loaded) before training starts
    from rftfm.bench.runner import build_trainer

    info = RunInfo(
        run_id="live-run",
        group="od_easy_fault",
        task_group="arith_a",
        model_size="xs",
        seed=21,
        num_steps=E2E_STEPS,
        control_or_fault="fault",
        fault_family="od",
        fault_type="lr_high",
        fault_strength="easy",
        onset_step=E2E_ONSET,
    )
    trainer = build_trainer(info, callbacks=[JsonlLogCallback(log)], output_dir=str(tmp_path / "out"))
    trainer.train()
    training_done = time.time()
    watcher.wait(timeout=180)
    reader.join(timeout=10)
    out = "".join(lines)
    print(out)  # shown with pytest -s: the live alerts
    assert watcher.returncode == EXIT_ALARM, out
    with IncidentStore(db) as store:
        alarms = store.events(run_id="live-run", kind="alarm")
        diagnoses = store.events(run_id="live-run", kind="diagnosis")
    after_onset = [a for a in alarms if a["step"] >= E2E_ONSET]
    assert after_onset, out
    first = after_onset[0]  # (false-alarm rates before onset are the detector's own tests' business)
    assert first["time"] < training_done, out  # raised while the run was still training
    assert first["step"] < E2E_STEPS, out
    assert "ALARM" in out
    if diagnoses:  # the packaged diagnoser, once it ships, diagnoses at alarm time
        assert {d["step"] for d in diagnoses} <= {a["step"] for a in alarms}
        assert diagnoses[0]["time"] < training_done, out  # diagnosed while the run was training


def test_in_process_watch_callback_on_a_real_trl_run(tmp_path):
    from rftfm.bench.runner import train_run

    torch.set_num_threads(1)
    info = RunInfo(run_id="cb-run", group="normal", task_group="arith_a", model_size="xs", seed=5, num_steps=4)
    callback = WatchCallback(
        "cb-run", incidents=tmp_path / "inc.db", detector=KlDetector(-1.0), diagnoser=RecordingDiagnoser(), quiet=True
    )
    train_run(info, callbacks=[callback])
    assert [a.step for a in callback.alarms] == [1, 2, 3, 4]
    with IncidentStore(tmp_path / "inc.db") as store:
        assert [e["step"] for e in store.events(run_id="cb-run", kind="diagnosis")] == [1]


def test_monitor_memory_is_bounded_on_a_long_run():
    diagnoser = RecordingDiagnoser()
    monitor = RunMonitor("long", KlDetector(0.5), diagnoser, None, max_history=100)
    for i in range(1, 3001):
        monitor.observe(StepRecord(run_id="long", step=i, kl=1.0 if i == 3000 else 0.0), [])
    history = diagnoser.histories[-1]
    assert history.height == 100 and history["step"].to_list() == list(range(2901, 3001))
    assert history.columns == list(HISTORY_SCHEMA)  # features, learning rate, reward functions' means


def test_follow_waits_for_a_run_directory_to_appear(real_run, tmp_path, monkeypatch):
    """watch --follow started before the run: the directory and its layout files appear later."""
    import shutil

    use_monitor(monkeypatch, KlDetector(1e9))
    target = tmp_path / "later-run"

    def create() -> None:
        time.sleep(0.5)
        target.mkdir()
        time.sleep(0.3)
        shutil.copytree(real_run.run_dir / "train", target / "train")

    thread = threading.Thread(target=create)
    thread.start()
    result = runner.invoke(app, ["watch", str(target), "--follow", "--interval", "0.05", "--idle-timeout", "3"])
    thread.join()
    assert result.exit_code == EXIT_OK, result.output
    assert (
        "waiting for a log" in result.output
        and "6 step(s) [RFT-FaultBench step JSONL (OpenRLHF keys)]" in result.output
    )
    never = runner.invoke(
        app, ["watch", str(tmp_path / "never"), "--follow", "--interval", "0.05", "--idle-timeout", "0.3"]
    )
    assert never.exit_code == EXIT_BAD_INPUT


def test_a_learning_rate_cut_in_a_trl_log_alarms_unless_the_scheduler_jumps_by_design(tmp_path):
    log = tmp_path / "plateau.jsonl"
    rows = [{"step": s, "reward": 0.5, "reward_std": 0.3, "kl": 0.01, "entropy": 1.0, "completions/mean_length": 20.0,
             "learning_rate": 1e-5 if s < 8 else 1e-6} for s in range(1, 13)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = tmp_path / "summary.json"
    judged = runner.invoke(app, ["watch", str(log), "--format", "trl", "--quiet", "--json", str(summary)])
    assert judged.exit_code == EXIT_ALARM and json.loads(summary.read_text())["first_alarm_step"] == 8
    plateau = runner.invoke(app, ["watch", str(log), "--format", "trl", "--quiet", "--lr-scheduler",
                                  "reduce_lr_on_plateau"])
    assert plateau.exit_code == EXIT_OK, plateau.output


def test_a_cosine_with_restarts_trl_log_stays_silent_without_its_scheduler_type(tmp_path):
    log = tmp_path / "restarts.jsonl"
    lr = [1e-5 * 0.5 * (1 + math.cos(math.pi * (s % 10) / 10)) for s in range(30)]  # three cycles, hard restarts
    rows = [{"step": s + 1, "reward": 0.5, "reward_std": 0.3, "kl": 0.01, "entropy": 1.0,
             "completions/mean_length": 20.0, "learning_rate": lr[s]} for s in range(30)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    watched = runner.invoke(app, ["watch", str(log), "--format", "trl", "--quiet"])
    assert watched.exit_code == EXIT_OK, watched.output
    rows[24]["learning_rate"] = 30 * 1e-5  # a push past the run's own peak, mid-cycle
    rows[25:] = [{**r, "learning_rate": 30 * r["learning_rate"]} for r in rows[25:]]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = tmp_path / "summary.json"
    pushed = runner.invoke(app, ["watch", str(log), "--format", "trl", "--quiet", "--json", str(summary)])
    assert pushed.exit_code == EXIT_ALARM and json.loads(summary.read_text())["first_alarm_step"] == 25


def test_a_clip_ratio_above_0_in_a_trl_log_alarms_where_the_user_says_the_run_is_on_policy(tmp_path):
    log = tmp_path / "mismatch.jsonl"
    rows = [{"step": s, "reward": 0.5 + 0.01 * (s % 3), "reward_std": 0.3, "kl": 0.01, "entropy": 1.0,
             "completions/mean_length": 20.0, "learning_rate": 1e-5,
             "clip_ratio/region_mean": 0.0 if s < 15 else 0.004} for s in range(1, 25)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = tmp_path / "summary.json"
    off = runner.invoke(app, ["watch", str(log), "--format", "trl", "--quiet"])
    assert off.exit_code == EXIT_OK, off.output  # clipping after 14 steps at 0: a PPO-style run may, by design
    on = runner.invoke(app, ["watch", str(log), "--format", "trl", "--on-policy", "--json", str(summary)])
    assert on.exit_code == EXIT_ALARM, on.output
    assert json.loads(summary.read_text())["first_alarm_step"] == 15
    assert "any clip ratio above 0 alarms" in on.output and "rollout_mismatch" in on.output


def test_a_log_too_short_for_the_windowed_checks_says_so(tmp_path):
    def log(name: str, records: int) -> Path:
        rows = [{"step": 10 * (i + 1), "reward": 0.5, "reward_std": 0.3, "entropy": 1.0, "loss": 0.02,
                 "completions/mean_length": 20.0, "learning_rate": 1e-5} for i in range(records)]
        return write_jsonl(tmp_path / name, rows)

    short = runner.invoke(app, ["watch", str(log("short.jsonl", 8)), "--format", "trl"])
    assert short.exit_code == EXIT_OK, short.output
    assert "coverage: 8 logged step(s)" in short.output and "12th logged step" in short.output
    long = runner.invoke(app, ["watch", str(log("long.jsonl", 30)), "--format", "trl"])
    assert long.exit_code == EXIT_OK and "coverage" not in long.output, long.output
