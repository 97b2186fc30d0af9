"""Crash safety: ``kill -9`` during benchmark generation and during a remediation, damaged checkpoints.

* Generation: a subprocess generates a few tiny runs; it is SIGKILLed (with its worker
  processes) right after the first run is committed, then generation resumes. No run may be
  duplicated, lost or half-written.
* Remediation: a small torch training loop watched by the real closed loop
  (:class:`~rftfm.fm.loop.Controller`, :class:`~rftfm.fm.checkpoint.Checkpointer`,
  :class:`~rftfm.fm.incidents.IncidentStore`) kills itself with SIGKILL at a chosen point of a
  remediation (before the diagnosis is stored, inside the rollback, between two actions, inside
  the checkpoint written after revalidation). On restart the incident store must pass SQLite's
  integrity check and hold exactly a prefix of an un-killed run's events, and training must
  resume from the newest checkpoint that verifies.
* Checkpoints: a truncated, bit-flipped or pickle-bearing checkpoint is refused (checksum /
  ``torch.load(weights_only=True)``) and the previous one is used.

This file is also the worker: ``python tests/test_crash_safety.py remediation-worker DIR KILL_AT``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
ALARM_STEP = 6
KILL_POINTS = ("diagnosis", "rollback", "action", "checkpoint")


# --- the remediation worker (runs in a subprocess) --------------------------------------------


def weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_model() -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def remediation_worker(workdir: Path, kill_at: str) -> None:
    """Train STEPS steps under the closed loop; SIGKILL itself at ``kill_at`` ('none': never).

    On start it resumes from the newest valid checkpoint in ``workdir/ckpt`` if there is one.
    """
    import rftfm.fm.checkpoint as ckpt_module
    from rftfm.fm.incidents import IncidentStore
    from rftfm.fm.types import Alarm, Diagnosis, Hypothesis, SignalEvidence

    class ScriptedDetector:  # a fault that shows once at ALARM_STEP (per process), evidence since the step before
        fired = False

        def reset(self, run_id, task_group=None, model_size=None):
            pass

        def observe(self, record, trajectories):
            if record.step != ALARM_STEP or self.fired:
                return None
            self.fired = True
            evidence = SignalEvidence(signal="kl", direction="up", value=3.0, z=10.0, since_step=ALARM_STEP - 1)
            return Alarm(run_id=record.run_id, step=record.step, score=10.0, threshold=1.0, evidence=[evidence])

    class LrHighDiagnoser:
        def diagnose(self, history, run_id, step, task_group=None, model_size=None):
            return Diagnosis(run_id=run_id, step=step,
                             ranked=[Hypothesis(family="od", fault_type="lr_high", probability=0.9)],
                             summary="lr_high")

    class KillingStore(IncidentStore):
        def record(self, kind, run_id, step, payload, time_s=None):
            if kill_at == "diagnosis" and kind == "diagnosis":
                _die()  # the alarm is stored, its diagnosis is not
            row = super().record(kind, run_id, step, payload, time_s)
            if kill_at == "action" and kind == "action":
                _die()  # the rollback is stored, the learning-rate action is not
            return row

    real_load, real_save = ckpt_module.load_model, ckpt_module.save_model

    def killing_load(model, path, *args, **kwargs):  # inside the rollback: weights loaded, optimiser not yet
        result = real_load(model, path, *args, **kwargs)
        if kill_at == "rollback":
            _die()
        return result

    progress: dict[str, Any] = {"step": 0}

    def killing_save(model, path, *args, **kwargs):  # the checkpoint after revalidation: model file written, rest not
        real_save(model, path, *args, **kwargs)
        if kill_at == "checkpoint" and progress["step"] > ALARM_STEP:
            _die()

    ckpt_module.load_model, ckpt_module.save_model = killing_load, killing_save
    try:
        _train_watched(workdir, KillingStore, ScriptedDetector, LrHighDiagnoser, progress)
    finally:  # in-process use (the un-killed runs): leave the module as it was
        ckpt_module.load_model, ckpt_module.save_model = real_load, real_save


def _train_watched(
    workdir: Path, store_cls: Any, detector_cls: Any, diagnoser_cls: Any, progress: dict[str, Any]
) -> None:
    import torch

    from rftfm.fm.checkpoint import Checkpointer
    from rftfm.fm.loop import Controller, ControllerConfig, TrainerHandle
    from rftfm.records import StepRecord

    torch.set_num_threads(1)
    model, optimizer = make_model()
    store = store_cls(workdir / "incidents.db")
    checkpointer = Checkpointer(workdir / "ckpt", keep=4)
    log = open(workdir / "progress.jsonl", "a", encoding="utf-8")

    def note(**entry: Any) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())

    start = 0
    if checkpointer.steps():
        info, skipped = checkpointer.restore(model, optimizer)
        start = info.step
        for message in skipped:
            store.record("error", "crash-run", start,
                         {"stage": "resume", "error": message, "fallback": "previous checkpoint"})
        note(event="resume", step=start, weights=weights_digest(model), skipped=len(skipped))
    controller = Controller(detector_cls(), diagnoser_cls(), store=store, checkpointer=checkpointer, run_id="crash-run",
                            config=ControllerConfig(checkpoint_every=2, keep_checkpoints=4, revalidate_steps=3))
    handle = TrainerHandle(model=model, optimizer=optimizer, control=SimpleNamespace(should_training_stop=False))
    controller.start(handle, step=start)
    generator = torch.Generator().manual_seed(1)
    for step in range(start + 1, STEPS + 1):
        progress["step"] = step
        x = torch.randn(16, 4, generator=generator)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.observe(StepRecord(run_id="crash-run", step=step, policy_loss=loss.item(), kl=0.01 * step), [])
        note(event="step", step=step, weights=weights_digest(model))
    controller.finish()
    note(event="done", step=STEPS, errors=controller.counts["errors"])
    store.close()
    log.close()


# --- helpers for the parent --------------------------------------------------------------------


def run_worker(workdir: Path, kill_at: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The worker in a fresh process (``kill_at='none'`` runs in this process: a restart needs no kill)."""
    if kill_at == "none":
        remediation_worker(workdir, "none")
        return subprocess.CompletedProcess([], 0, "", "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, __file__, "remediation-worker", str(workdir), kill_at], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def comparable_events(db: Path) -> list[tuple]:
    """(kind, step, payload) of every stored event, oldest first, without run-time measurements."""
    from rftfm.fm.incidents import IncidentStore

    store = IncidentStore(db)
    try:
        integrity = store._conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert integrity == "ok", integrity
        events = store.events()
    finally:
        store.close()
    out = []
    for e in sorted(events, key=lambda e: (e["time"], e["id"])):
        payload = {k: v for k, v in e["payload"].items() if k not in ("monitor_seconds",)}
        out.append((e["kind"], e["step"], json.dumps(payload, sort_keys=True)))
    return out


def progress(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "progress.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_events(tmp_path_factory) -> list[tuple]:
    work = tmp_path_factory.mktemp("reference")
    result = run_worker(work, "none")
    assert result.returncode == 0, result.stderr[-2000:]
    events = comparable_events(work / "incidents.db")
    kinds = [k for k, _, _ in events]
    assert kinds.count("alarm") == 1 and "diagnosis" in kinds and kinds.count("action") == 2 and "outcome" in kinds
    assert [json.loads(p)["result"] for k, _, p in events if k == "outcome"] == ["kept"]
    return events


def kill_and_resume(tmp_path: Path, kill_at: str, reference: list[tuple]) -> None:
    from rftfm.fm.checkpoint import Checkpointer

    killed = run_worker(tmp_path, kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    # 1. the incident store is consistent: integrity ok, exactly a prefix of the un-killed run's events
    events = comparable_events(tmp_path / "incidents.db")
    assert events == reference[: len(events)] and any(k == "alarm" for k, _, _ in events)
    # 2. every checkpoint under a final name verifies (atomic writes); the newest valid one predates the fault
    ck = Checkpointer(tmp_path / "ckpt", keep=4)
    for step in ck.steps():
        ck.verify(ck.root / f"ckpt-{step:07d}")
    latest, skipped = ck.latest_valid()
    assert latest is not None and skipped == [] and latest.step < ALARM_STEP
    before = progress(tmp_path)
    # 3. restart: training resumes from that checkpoint's exact weights and completes
    resumed = run_worker(tmp_path, "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = progress(tmp_path)[len(before):]
    assert after[0]["event"] == "resume" and after[0]["step"] == latest.step
    model, _ = make_model()
    from safetensors.torch import load_model

    load_model(model, str(latest.path / "model.safetensors"))
    assert after[0]["weights"] == weights_digest(model)
    steps = [e["step"] for e in after if e["event"] == "step"]
    assert steps == list(range(latest.step + 1, STEPS + 1))
    assert after[-1] == {"event": "done", "step": STEPS, "errors": 0}
    # the first session's events are still there exactly once; the second session appended its own
    final = comparable_events(tmp_path / "incidents.db")
    assert final[: len(events)] == events and sum(k == "run" for k, _, _ in final) >= 2


@pytest.mark.parametrize("kill_at", ["rollback"])
def test_kill_during_remediation_then_resume(tmp_path: Path, kill_at: str, reference_events) -> None:
    kill_and_resume(tmp_path, kill_at, reference_events)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [k for k in KILL_POINTS if k != "rollback"])
def test_kill_at_every_point_of_a_remediation_then_resume(tmp_path: Path, kill_at: str, reference_events) -> None:
    kill_and_resume(tmp_path, kill_at, reference_events)


# --- damaged checkpoints ----------------------------------------------------------------------


class _Evil:
    """Pickles to a call of os.system: what a tampered checkpoint would carry."""

    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('RFTFM_PWNED', '/tmp/rftfm-pwned')}",))


@pytest.mark.parametrize("damage", ["truncate_model", "flip_state", "truncate_meta", "pickle_payload"])
def test_damaged_newest_checkpoint_is_refused_and_the_previous_one_used(
    tmp_path: Path, damage: str, monkeypatch
) -> None:
    import torch

    from rftfm.fm.checkpoint import CHECKSUM, META_FILE, MODEL_FILE, STATE_FILE, Checkpointer, file_checksum

    pwned = tmp_path / "pwned"
    monkeypatch.setenv("RFTFM_PWNED", str(pwned))
    model, optimizer = make_model()
    ck = Checkpointer(tmp_path / "ckpt", keep=3)
    ck.save(2, model, optimizer)
    good = weights_digest(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    newest = ck.save(4, model, optimizer).path
    if damage == "truncate_model":
        (newest / MODEL_FILE).write_bytes((newest / MODEL_FILE).read_bytes()[:100])
    elif damage == "flip_state":
        data = bytearray((newest / STATE_FILE).read_bytes())
        data[len(data) // 2] ^= 0x01
        (newest / STATE_FILE).write_bytes(bytes(data))
    elif damage == "truncate_meta":
        (newest / META_FILE).write_text((newest / META_FILE).read_text()[:20])
    else:  # a tampered state file whose checksum was updated too: only weights_only loading stops it
        torch.save({"optimizer": None, "scheduler": None, "rng": _Evil()}, newest / STATE_FILE)
        meta = json.loads((newest / META_FILE).read_text())
        meta[CHECKSUM][STATE_FILE] = file_checksum(newest / STATE_FILE)
        (newest / META_FILE).write_text(json.dumps(meta))
    fresh, fresh_opt = make_model()
    info, skipped = ck.restore(fresh, fresh_opt)
    assert info.step == 2 and len(skipped) == 1 and "ckpt-0000004" in skipped[0]
    assert weights_digest(fresh) == good
    assert not pwned.exists()  # the pickled call never ran


# --- kill -9 during benchmark generation ------------------------------------------------------

GENERATE_SCRIPT = """
import sys
from pathlib import Path
from rftfm.bench.generate import generate
from rftfm.records import RunInfo
runs = [RunInfo(run_id=f"k{i}", group="normal", task_group="arith_a", model_size="xs", seed=10 + i, num_steps=3,
                prompts_per_step=2, num_generations=4, control_or_fault="normal") for i in range(3)]
generate(Path(sys.argv[1]), runs, workers=1)
"""


def test_kill_during_generation_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    from rftfm.io.faultbench import RUN_INFO_FILE, STEP_FILE, SUB_DIR, TMP_PREFIX, TRAJ_FILE
    from rftfm.io.loader import load_benchmark

    root = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-c", GENERATE_SCRIPT, str(root)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = root / "normal" / "k0" / RUN_INFO_FILE
    deadline = time.monotonic() + 240
    try:
        while not first.exists():
            assert proc.poll() is None, f"generation ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "first run never committed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the generator and its worker processes
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = sorted(p.parent.name for p in root.glob(f"*/*/{RUN_INFO_FILE}"))
    assert "k0" in committed and len(committed) < 3
    k0_bytes = {p.name: p.read_bytes() for p in (root / "normal" / "k0" / SUB_DIR).iterdir()}

    resumed = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_dirs = sorted(p.name for p in (root / "normal").iterdir())
    assert run_dirs == ["k0", "k1", "k2"]  # nothing lost, no leftover half-written .tmp- directory
    assert not list(root.rglob(f"{TMP_PREFIX}*"))
    assert {p.name: p.read_bytes() for p in (root / "normal" / "k0" / SUB_DIR).iterdir()} == k0_bytes  # not redone
    for run in run_dirs:
        steps = [json.loads(x)["step"] for x in (root / "normal" / run / SUB_DIR / STEP_FILE).read_text().splitlines()]
        assert steps == [1, 2, 3]  # complete, no duplicated step lines
        trajs = (root / "normal" / run / SUB_DIR / TRAJ_FILE).read_text().splitlines()
        assert len(trajs) == 3 * 2 * 4 and all(json.loads(t) for t in trajs)
    registry = (root / "metadata" / "registries" / "normal.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in registry[1:]) == ["k0", "k1", "k2"]
    bench = load_benchmark(root)  # the Parquet copy agrees with the JSONL files
    assert bench.runs.height == 3 and bench.steps.height == 9 and bench.trajectories.height == 72
    assert bench.steps.select("run_id", "step").is_duplicated().sum() == 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "remediation-worker":
        remediation_worker(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} remediation-worker DIR KILL_AT")
