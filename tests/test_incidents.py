"""IncidentStore: SQLite WAL, the six tables, payload round trips, concurrent readers and writers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from rftfm.fm.incidents import KIND_TABLES, IncidentStore
from rftfm.fm.types import Action, Alarm, Diagnosis, Hypothesis, Outcome, SignalEvidence


def sample_messages():
    alarm = Alarm(
        run_id="r1",
        step=7,
        score=5.2,
        threshold=2.5,
        evidence=[SignalEvidence(signal="kl", direction="up", value=3.0, expected=0.1, z=9.0)],
    )
    diagnosis = Diagnosis(
        run_id="r1",
        step=7,
        ranked=[Hypothesis(family="od", fault_type="lr_high", probability=0.8)],
        summary="lr_high since step 5",
    )
    action = Action(kind="set_knob", knob="learning_rate", value=3e-5, previous=3e-4, reason="lr_high")
    outcome = Outcome(action=action, result="kept", detail="anomaly cleared")
    return alarm, diagnosis, action, outcome


def test_wal_mode_and_tables(tmp_path):
    db = tmp_path / "inc.db"
    IncidentStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(KIND_TABLES.values()) <= tables
    columns = [r[1] for r in conn.execute("PRAGMA table_info(alarms)")]
    assert columns == ["id", "run_id", "step", "time", "kind", "payload"]


def test_record_and_read_back_every_kind(tmp_path):
    alarm, diagnosis, action, outcome = sample_messages()
    with IncidentStore(tmp_path / "inc.db") as store:
        store.record("run", "r1", None, {"source": "/x/log.jsonl"}, time_s=1.0)
        store.record("alarm", "r1", 7, alarm, time_s=2.0)
        store.record("diagnosis", "r1", 7, diagnosis, time_s=3.0)
        store.record("action", "r1", 7, action, time_s=4.0)
        store.record("outcome", "r1", 10, outcome, time_s=5.0)
        store.record("error", "r1", 8, {"error": "boom", "value": float("nan")}, time_s=6.0)
        store.record("alarm", "r2", 3, alarm.model_copy(update={"run_id": "r2"}), time_s=2.5)
        events = store.events(run_id="r1")
        assert [e["kind"] for e in events] == ["run", "alarm", "diagnosis", "action", "outcome", "error"]
        assert Alarm.model_validate(events[1]["payload"]) == alarm
        assert Diagnosis.model_validate(events[2]["payload"]).top.fault_type == "lr_high"
        assert Outcome.model_validate(events[4]["payload"]) == outcome
        assert events[5]["payload"]["value"] is None  # NaN is not JSON: stored as null
        assert [e["run_id"] for e in store.events(kind="alarm")] == ["r1", "r2"]
        assert store.events(run_id="nobody") == []
        assert store.run_ids() == ["r1", "r2"]
    # persisted: a new store object reads the same rows
    with IncidentStore(tmp_path / "inc.db") as again:
        assert len(again.events()) == 7


def test_unknown_kind_and_bad_payload_are_refused(tmp_path):
    with IncidentStore(tmp_path / "inc.db") as store:
        with pytest.raises(ValueError, match="unknown incident kind"):
            store.record("alarms!", "r", 1, {})
        with pytest.raises(TypeError):
            store.record("alarm", "r", 1, ["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.events(kind="nope")


def test_concurrent_writers_threads(tmp_path):
    store = IncidentStore(tmp_path / "inc.db")

    def write(worker: int) -> None:
        for i in range(50):
            store.record("alarm", f"run-{worker}", i, {"i": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events(kind="alarm")) == 200
    assert sorted(e["step"] for e in store.events(run_id="run-2")) == list(range(50))
    store.close()


READER = r"""
import json, sys, time
from rftfm.fm.incidents import IncidentStore
store = IncidentStore(sys.argv[1])
seen = []
deadline = time.time() + 20
while time.time() < deadline:
    n = len(store.events(kind="alarm"))
    seen.append(n)
    if n >= 100:
        break
    time.sleep(0.005)
print(json.dumps(seen))
"""


def test_reader_in_another_process_sees_committed_rows_while_writing(tmp_path):
    db = tmp_path / "inc.db"
    store = IncidentStore(db)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(db)], stdout=subprocess.PIPE, text=True)
    for i in range(100):
        store.record("alarm", "live", i, {"i": i})
    out, _ = reader.communicate(timeout=60)
    counts = json.loads(out)
    assert reader.returncode == 0
    assert counts[-1] == 100
    assert counts == sorted(counts)  # a reader only ever sees more committed rows, never a torn state
    store.close()


def test_faulty_runs_with_the_same_configuration_and_seed_share_one_clean_arm():
    from rftfm.bench.eval_remediation import clean_twin
    from rftfm.records import RunInfo

    base = dict(
        group="x_easy_fault",
        task_group="arith_a",
        model_size="xs",
        seed=7,
        control_or_fault="fault",
        fault_strength="easy",
    )
    a = RunInfo(run_id="a", fault_type="lr_high", fault_family="od", onset_step=1, **base)
    b = RunInfo(
        run_id="b", fault_type="reward_noise", fault_family="rf", onset_step=10, **{**base, "group": "rf_easy_fault"}
    )
    c = RunInfo(run_id="c", fault_type="lr_high", fault_family="od", onset_step=1, **{**base, "seed": 8})
    assert clean_twin(a).run_id == clean_twin(b).run_id != clean_twin(c).run_id
    assert clean_twin(a).fault_type is None and clean_twin(a).control_or_fault == "normal"


def test_remediation_rows_resume_and_a_torn_last_line_is_dropped(tmp_path):
    import json

    from rftfm.bench.eval_remediation import _tasks, read_rows
    from rftfm.records import RunInfo

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"run_id": "a", "arm": "loop"}) + "\n" + '{"run_id": "b", "ar', encoding="utf-8")
    assert read_rows(rows) == [{"run_id": "a", "arm": "loop"}] and read_rows(tmp_path / "none.jsonl") == []
    control = RunInfo(
        run_id="c", group="rf_hard_control", task_group="arith_a", model_size="xs", seed=3, control_or_fault="control"
    )
    hard = RunInfo(
        run_id="h",
        group="rf_hard_fault",
        task_group="arith_a",
        model_size="xs",
        seed=3,
        control_or_fault="fault",
        fault_type="reward_noise",
        fault_family="rf",
        fault_strength="hard",
        onset_step=1,
    )
    arms = sorted(arm for _, arm in _tasks([hard], [control]))
    # the control's loop-off arm and the hard fault's clean arm are one training
    assert arms == ["clean", "generic", "loop", "none", "on", "trainside"]
    other = control.model_copy(update={"run_id": "n", "seed": 4, "group": "normal", "control_or_fault": "normal"})
    # a healthy run's two arms side by side (they train at the same time), its twin's clean arm not again
    assert [(r.run_id, arm) for r, arm in _tasks([hard], [control, other])][-4:] == [
        ("c", "on"), ("c", "clean"), ("n", "on"), ("n", "clean")
    ]


def test_select_runs_filters_types_and_rejects_unknown_ones():
    import polars as pl

    from rftfm.bench.eval_remediation import select_runs

    rows = [
        dict(
            run_id=f"{t}-{i}",
            group="g",
            task_group="arith_a",
            model_size="xs",
            seed=i,
            control_or_fault="fault",
            fault_type=t,
            fault_family="od",
            fault_strength="easy",
            onset_step=1 + 9 * (i % 2),
        )
        for t in ("lr_high", "lr_low")
        for i in range(3)
    ]
    rows += [
        dict(
            run_id="n",
            group="normal",
            task_group="arith_a",
            model_size="xs",
            seed=9,
            control_or_fault="normal",
            fault_type=None,
            fault_family=None,
            fault_strength=None,
            onset_step=None,
        )
    ]
    faulty, healthy = select_runs(pl.DataFrame(rows), per_type=2, healthy=None, limit=None, types=["lr_low"])
    assert [r.fault_type for r in faulty] == ["lr_low", "lr_low"] and {r.onset_step for r in faulty} == {1, 10}
    assert [r.run_id for r in healthy] == ["n"]
    with pytest.raises(ValueError, match="unknown fault types"):
        select_runs(pl.DataFrame(rows), None, None, None, types=["nope"])


def test_remediation_summary_scores_repairs_replays_and_targets_with_an_interval():
    from rftfm.bench.eval_remediation import ArmResult, _worse_lines, clean_twin, summarise, target_status
    from rftfm.records import RunInfo

    faulty = [
        RunInfo(
            run_id=f"f{i}",
            group="od_easy_fault",
            task_group="arith_a",
            model_size="xs",
            seed=i,
            control_or_fault="fault",
            fault_type="lr_high",
            fault_family="od",
            fault_strength="easy",
            onset_step=1,
        )
        for i in range(4)
    ]

    def row(run_id, arm, accuracy, steps=28, cleared=False, actions=()):
        return vars(
            ArmResult(
                run_id=run_id,
                arm=arm,
                final_accuracy=accuracy,
                wall_s=1.0,
                steps=steps,
                cleared=cleared,
                actions=list(actions),
                alarms=1,
            )
        )

    rows = []
    for i, info in enumerate(faulty):
        rows += [
            row(clean_twin(info).run_id, "clean", 0.5),
            row(info.run_id, "none", 0.1 if i < 3 else 0.48),  # run 3: the fault did not hurt it
            row(info.run_id, "generic", 0.2),
        ]
        # runs 0-2 repaired (run 0 after a replayed rollback); run 3 cleared but short of 90 % of the clean accuracy
        rows.append(
            row(
                info.run_id,
                "loop",
                0.5 if i < 3 else 0.4,
                steps=34 if i == 0 else 28,
                cleared=True,
                actions=["3:rollback"],
            )
        )
    summary = summarise(rows, faulty, [])
    assert [p["loop_success"] for p in summary["pairs"]] == [True, True, True, False]
    cost = summary["tables"]["overhead_faulty"]
    assert cost["steps_vs_clean_%"] == round(100 * 6 / 112, 1) and cost["runs_replaying_%"] == 25.0
    easy = target_status(summary)[0]
    assert "75.0 % of 4 (95 % CI 30.1-95.4" in easy and easy.endswith("**not met**")
    # beside the targets, the runs the fault hurt (the no-remediation arm below 90 % of the clean accuracy)
    assert any("on the 3 of 4 faulty runs the fault hurt" in line and line.endswith("knob-repairable repaired 3 of 3")
               for line in target_status(summary))
    # and the runs an arm left worse than no remediation did (run 3: 0.4 against 0.48 without the loop)
    worse = next(line for line in target_status(summary) if "left worse than without remediation" in line)
    assert "of 4: loop 1 (" in worse and "generic 1 (" in worse and "trainside" not in worse
    # a fault that helped its run (0.40 without the loop, 0.28 clean) brought back to the clean twin is not worse
    helped = {**summary["pairs"][0], "none_accuracy": 0.40, "clean_accuracy": 0.28, "loop_accuracy": 0.28,
              "loop_halted": False, "generic_accuracy": 0.2, "generic_halted": False}
    assert "loop 0; generic 1" in _worse_lines([helped])[0]
    # an evaluation without the optional train-side arm keeps its pairs; with it, the arm is scored alike
    assert "trainside_repair_%" not in summary["tables"]["by_class_setting"][0]
    assert "without an eval callable" not in "\n".join(target_status(summary))
    trainside = [row(info.run_id, "trainside", 0.5 if i < 2 else 0.1, cleared=i < 2, actions=["3:rollback"])
                 for i, info in enumerate(faulty)]
    summary = summarise(rows + trainside, faulty, [])
    assert [p["trainside_success"] for p in summary["pairs"]] == [True, True, False, False]
    assert summary["tables"]["by_class_setting"][0]["trainside_repair_%"] == 50.0
    assert "without an eval callable (`trainside`: the loop never sees eval accuracy): 50.0 %" in target_status(
        summary
    )[1]


def test_earlier_clean_and_no_remediation_arms_are_rebuilt_from_a_summary_and_loop_arms_are_not():
    from rftfm.bench.eval_remediation import ArmResult, clean_twin, rows_from_summary, summarise
    from rftfm.records import RunInfo

    fault = RunInfo(
        run_id="f",
        group="od_easy_fault",
        task_group="arith_a",
        model_size="xs",
        seed=1,
        control_or_fault="fault",
        fault_type="lr_high",
        fault_family="od",
        fault_strength="easy",
        onset_step=1,
        num_steps=28,
    )
    normal = RunInfo(
        run_id="n",
        group="normal",
        task_group="arith_a",
        model_size="xs",
        seed=2,
        control_or_fault="normal",
        num_steps=28,
    )
    rows = [
        vars(ArmResult(run_id=clean_twin(fault).run_id, arm="clean", final_accuracy=0.5, wall_s=2.0, steps=28)),
        vars(ArmResult(run_id="f", arm="none", final_accuracy=0.1, wall_s=3.0, steps=28, alarms=4, monitor_s=0.2)),
        vars(
            ArmResult(
                run_id="f", arm="loop", final_accuracy=0.5, wall_s=4.0, steps=31, cleared=True, actions=["3:rollback"]
            )
        ),
        vars(ArmResult(run_id="f", arm="generic", final_accuracy=0.3, wall_s=4.0, steps=30)),
        vars(ArmResult(run_id=clean_twin(normal).run_id, arm="clean", final_accuracy=0.6, wall_s=2.0, steps=28)),
        vars(ArmResult(run_id="n", arm="on", final_accuracy=0.6, wall_s=2.2, steps=28)),
    ]
    before = summarise(rows, [fault], [normal])
    rebuilt = rows_from_summary(before, [fault, normal])
    assert sorted((r["run_id"], r["arm"]) for r in rebuilt) == sorted(
        [(clean_twin(fault).run_id, "clean"), ("f", "none"), (clean_twin(normal).run_id, "clean")]
    )
    fresh = [r for r in rows if r["arm"] in ("loop", "generic", "on")]
    after = summarise(rebuilt + fresh, [fault], [normal])
    assert after["pairs"] == before["pairs"] and after["healthy"] == before["healthy"]
    with pytest.raises(ValueError, match="depend on the loop"):
        rows_from_summary(before, [fault], ["loop"])
    retimed = rows_from_summary(before, [fault, normal], healthy_off=False)  # the healthy loop-off arm is trained again
    assert (clean_twin(normal).run_id, "clean") not in {(r["run_id"], r["arm"]) for r in retimed} and len(retimed) == 2


def test_an_alarm_explained_without_a_diagnosis_does_not_keep_a_repair_from_clearing():
    """After an undone knob push the loop explains lingering alarms as lag even when the diagnoser
    abstained (``explained_by`` is then None): the evaluation must not count them as a relapse."""
    from types import SimpleNamespace

    from rftfm.bench.eval_remediation import ArmResult, fill_from_controller
    from rftfm.fm.incidents import MemoryIncidentStore
    from rftfm.fm.policy import ControllerConfig

    for explanation, cleared in (("the lag of an undone knob change", True), (None, False)):
        store = MemoryIncidentStore()
        store.record("action", "r", 10, {"kind": "set_knob", "knob": "scale_rewards", "value": "group"})
        for step in range(11, 20):
            payload = {"score": 5.0, "threshold": 1.0, "evidence": []}
            if explanation:
                payload |= {"explained_by": None, "explanation": explanation}
            store.record("alarm", "r", step, payload)
        ctl = SimpleNamespace(
            store=store,
            run_id="r",
            monitor_seconds=0.0,
            mode="watching",
            outcomes=[],
            config=ControllerConfig(),
            counts={"interventions": 1, "rollbacks": 0, "errors": 0},
        )
        result = ArmResult(run_id="r", arm="loop", final_accuracy=0.5, wall_s=1.0, steps=28)
        fill_from_controller(result, ctl)
        assert result.cleared is cleared and result.alarms_after == 9 and not result.cleared_strict


def test_evaluate_remediation_takes_exactly_one_of_data_and_preset(tmp_path):
    from typer.testing import CliRunner

    from rftfm.cli import app

    for args, message in (
        (["--preset", "nope"], "unknown preset"),
        ([], "exactly one of --data and --preset"),
        (["--preset", "mini", "--data", str(tmp_path)], "exactly one of --data and --preset"),
        (["--from-json", str(tmp_path / "missing.json")], "cannot read --from-json"),
    ):
        out = CliRunner().invoke(app, ["bench", "evaluate", "remediation", *args])
        assert out.exit_code == 2 and message in " ".join(out.output.split()), out.output
    # a preset needs no generated data: the selection alone is printed before any training
    out = CliRunner().invoke(
        app,
        [
            "bench",
            "evaluate",
            "remediation",
            "--preset",
            "mini",
            "--types",
            "lr_high",
            "--limit",
            "0",
            "--healthy",
            "0",
            "--split",
            "all",
        ],
    )
    assert out.exit_code == 0 and "0 faulty runs" in out.output, out.output


def test_both_stores_give_back_the_same_events(tmp_path):
    """The in-memory store follows the SQLite one: same kinds refused, same JSON payloads (NaN -> null)."""
    from rftfm.fm.incidents import IncidentLog, MemoryIncidentStore

    alarm, diagnosis, action, outcome = sample_messages()
    memory, sqlite = MemoryIncidentStore(), IncidentStore(tmp_path / "inc.db")
    for store in (memory, sqlite):
        assert isinstance(store, IncidentLog)
        for i, (kind, step, payload) in enumerate(
            (
                ("run", None, {"event": "start"}),
                ("alarm", 7, alarm),
                ("diagnosis", 7, diagnosis),
                ("action", 7, action),
                ("outcome", 10, outcome),
                ("error", 8, {"value": float("nan")}),
            )
        ):
            store.record(kind, "r1", step, payload, time_s=float(i))
        with pytest.raises(ValueError, match="unknown incident kind"):
            store.record("alarms!", "r1", 1, {})
    strip = lambda events: [{k: v for k, v in e.items() if k != "id"} for e in events]  # noqa: E731
    assert strip(memory.events()) == strip(sqlite.events())
    assert strip(memory.events(kind="alarm")) == strip(sqlite.events(kind="alarm"))
    assert memory.run_ids() == sqlite.run_ids() == ["r1"]
    assert memory.events(run_id="r1", kind="error")[0]["payload"] == {"value": None}
    sqlite.close()


def test_evidence_without_a_baseline_claims_no_direction():
    """A run's first record has no baseline: the alarm names the signals the detector weighed, and no text
    a user reads says which way they moved (the detector's default label would read "down")."""
    from rftfm.fm.detect import describe as detector_text
    from rftfm.fm.diagnose import describe as diagnosis_text
    from rftfm.fm.incidents import MemoryIncidentStore
    from rftfm.fm.ledger import Journal
    from rftfm.report.console import evidence_text

    first = SignalEvidence(signal="truncated_ratio", direction="down", value=0.1875)
    later = SignalEvidence(signal="kl", direction="up", value=0.48, expected=0.012, z=6.0, ratio=40.0, since_step=37)
    assert not first.measured and later.measured
    assert first.short() == "truncated_ratio 0.188 (no baseline yet)" and later.short() == "kl up"
    for text in (detector_text(first), diagnosis_text(first), evidence_text(first)):
        assert "down" not in text and "↓" not in text and "0.188" in text
    assert "x40" in detector_text(later) and "↑" in evidence_text(later)
    journal = Journal(MemoryIncidentStore(), "r", 64)
    journal.alarm(1, Alarm(run_id="r", step=1, score=2.0, threshold=1.0, evidence=[first, later]))
    assert journal.timeline[-1][2] == "score 2.00 > 1.00: truncated_ratio 0.188 (no baseline yet), kl up"


def test_the_evaluation_counts_the_diagnosis_acted_on_before_that_of_an_earlier_unconfirmed_alarm():
    from types import SimpleNamespace

    from rftfm.bench.eval_remediation import ArmResult, fill_from_controller
    from rftfm.fm.incidents import MemoryIncidentStore
    from rftfm.fm.policy import ControllerConfig
    from rftfm.fm.types import Diagnosis, Hypothesis

    def diagnosis(step, fault_type, family):
        top = Hypothesis(family=family, fault_type=fault_type, probability=0.6)
        return Diagnosis(run_id="r", step=step, ranked=[top])

    for acted, expected in ((True, "reward_scale"), (False, "advantage_normalization")):
        store = MemoryIncidentStore()
        store.record("alarm", "r", 3, {"score": 1.2, "threshold": 1.0, "evidence": []})
        store.record("diagnosis", "r", 3, diagnosis(3, "advantage_normalization", "ca"))  # unconfirmed
        store.record("alarm", "r", 8, {"score": 1.2, "threshold": 1.0, "evidence": []})
        store.record("diagnosis", "r", 8, diagnosis(8, "reward_scale", "rf"))
        if acted:
            store.record("action", "r", 8, {"kind": "set_knob", "knob": "scale_rewards", "value": "group"})
        store.record("diagnosis", "r", 12, diagnosis(12, "lr_high", "od"))
        ctl = SimpleNamespace(
            store=store, run_id="r", monitor_seconds=0.0, mode="watching", outcomes=[], config=ControllerConfig(),
            counts={"interventions": int(acted), "rollbacks": 0, "errors": 0},
        )
        result = ArmResult(run_id="r", arm="loop", final_accuracy=0.5, wall_s=1.0, steps=20)
        fill_from_controller(result, ctl)
        assert result.diagnosed == expected
