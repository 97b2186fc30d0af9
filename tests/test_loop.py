"""The closed loop live inside a TRL GRPO run: it repairs, records, and never breaks training."""

from __future__ import annotations

import re
import tempfile

import numpy as np
import polars as pl
import pytest
import torch

from rftfm.bench.runner import build_trainer
from rftfm.fm.checkpoint import MODEL_FILE, Checkpointer
from rftfm.fm.incidents import IncidentStore
from rftfm.fm.policy import ControllerConfig
from rftfm.fm.remediate import Remediator
from rftfm.fm.types import Alarm, Diagnosis, Hypothesis, SignalEvidence
from rftfm.integrations.trl_callback import RFTFMCallback, step_record_from_logs
from rftfm.records import RunInfo, StepRecord

torch.set_num_threads(1)
STEPS = 10
ONSET = 5


class WarmupZDetector:
    """A real (if simple) streaming detector: |z| of a step against this run's own first steps."""

    signals = {"eval_accuracy": 0.05, "kl": 0.1, "entropy": 0.1}

    def reset(self, run_id, task_group=None, model_size=None):
        self.seen = {k: [] for k in self.signals}

    def observe(self, rec, trajectories):
        evidence = []
        for name, floor in self.signals.items():
            value = getattr(rec, name)
            if value is None:
                continue
            hist = self.seen[name]
            if len(hist) >= 3:
                z = (value - np.mean(hist)) / max(float(np.std(hist)), floor)
                if abs(z) > 4:
                    evidence.append(
                        SignalEvidence(
                            signal=name,
                            direction="up" if z > 0 else "down",
                            value=value,
                            z=float(z),
                            since_step=rec.step,
                        )
                    )
            hist.append(value)
        if evidence:
            return Alarm(
                run_id=rec.run_id,
                step=rec.step,
                score=max(abs(e.z) for e in evidence),
                threshold=4.0,
                evidence=evidence,
            )
        return None


class KlRuleDiagnoser:
    """A real rule: KL far above its early level with eval accuracy falling -> lr_high, else unknown."""

    def diagnose(self, history: pl.DataFrame, run_id, step, task_group=None, model_size=None):
        h = history.filter(pl.col("step") <= step).sort("step")
        early, last = h.head(3), h.tail(1)
        acc_drop = (early["eval_accuracy"].mean() or 0) - (last["eval_accuracy"].item() or 0)
        kl_jump = (last["kl"].item() or 0) > 5 * max(early["kl"].mean() or 0, 0.02)
        if acc_drop > 0.2 or kl_jump:
            return Diagnosis(
                run_id=run_id,
                step=step,
                ranked=[Hypothesis(family="od", fault_type="lr_high", probability=0.9)],
                summary=f"lr_high at step {step}",
            )
        return Diagnosis(run_id=run_id, step=step, ranked=[], unknown=True, summary="unknown")


def run_info(kind="fault", fault="lr_high"):
    return RunInfo(
        run_id=f"t-{kind}",
        group="x",
        task_group="arith_a",
        model_size="xs",
        seed=3,
        control_or_fault=kind,
        fault_type=fault if kind == "fault" else None,
        fault_strength="easy" if kind == "fault" else None,
        onset_step=ONSET,
        num_steps=STEPS,
    )


def restored_step(detail: str) -> int:
    """The checkpoint step in a rollback action's detail ("to step N[; K step(s) added to train again]")."""
    match = re.match(r"to step (\d+)", detail)
    assert match is not None, detail
    return int(match.group(1))


def train(info, attach=None, callbacks=None):
    records = []
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(info, [lambda r, t: records.append(r)], callbacks=callbacks, output_dir=out)
        callback = attach(trainer) if attach else None
        trainer.train()
    return trainer, callback, records


@pytest.fixture(scope="module")
def no_loop():
    return train(run_info())


def test_loop_detects_diagnoses_rolls_back_and_repairs_lr_high(tmp_path, no_loop):
    store = IncidentStore(tmp_path / "incidents.db")
    trainer, cb, records = train(
        run_info(),
        lambda t: RFTFMCallback.attach(t, detector=WarmupZDetector(), diagnoser=KlRuleDiagnoser(), incidents=store),
    )
    _, _, faulty = no_loop
    # the steps the rollback discarded were trained again (the run was extended by them)
    assert cb.controller.length.replayed > 0 and trainer.state.global_step == STEPS + cb.controller.length.replayed
    kinds = [e["kind"] for e in store.events(run_id="t-fault")]
    for kind in ("run", "alarm", "diagnosis", "action", "outcome"):
        assert kind in kinds, kind
    actions = store.events(run_id="t-fault", kind="action")
    assert actions[0]["payload"]["kind"] == "rollback" and actions[0]["payload"]["detail"].startswith("to step ")
    assert restored_step(actions[0]["payload"]["detail"]) < ONSET  # rolled back to before the onset
    lr = [a for a in actions if a["payload"]["knob"] == "learning_rate"][0]["payload"]
    assert lr["value"] == pytest.approx(3e-4) and lr["previous"] == pytest.approx(3e-4 * 30)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert records[-1].eval_accuracy > faulty[-1].eval_accuracy + 0.2  # the run recovered
    assert cb.controller.counts["errors"] == 0
    store.close()


def test_an_undone_configuration_push_resumes_into_exactly_the_clean_run():
    """Resume semantics: the rollback restores weights, optimiser and RNG from before the push, and the
    discarded steps' prompt batches come again, so once the pushed LR is undone the repaired run
    trains the clean run's updates on the clean run's batches: same weights, bit for bit."""
    from rftfm.bench.eval_remediation import clean_twin

    clean, _, _ = train(clean_twin(run_info()))
    trainer, cb, _ = train(
        run_info(), lambda t: RFTFMCallback.attach(t, detector=WarmupZDetector(), diagnoser=KlRuleDiagnoser())
    )
    actions = [e["payload"] for e in cb.controller.store.events(kind="action")]
    assert [a["kind"] for a in actions] == ["rollback", "set_knob"] and restored_step(actions[0]["detail"]) < ONSET
    assert "discarded batch(es) come again" in actions[0]["detail"]
    assert trainer.state.global_step == STEPS + cb.controller.length.replayed
    repaired, reference = trainer.model.state_dict(), clean.model.state_dict()
    assert all(torch.equal(repaired[k], reference[k]) for k in reference)


def test_healthy_run_gets_no_intervention():
    trainer, cb, _ = train(
        run_info("normal"), lambda t: RFTFMCallback.attach(t, detector=WarmupZDetector(), diagnoser=KlRuleDiagnoser())
    )
    assert cb.controller.counts["interventions"] == 0 and cb.controller.counts["checkpoints"] >= STEPS // 2


class BrokenDetector(WarmupZDetector):
    def observe(self, rec, trajectories):
        if rec.step >= 3:
            raise RuntimeError("detector bug")
        return super().observe(rec, trajectories)


class BrokenDiagnoser(KlRuleDiagnoser):
    def diagnose(self, *args, **kwargs):
        raise ValueError("diagnoser bug")


class BrokenRemediator(Remediator):
    def plan(self, *args, **kwargs):
        raise KeyError("remediator bug")


class BrokenCheckpointer(Checkpointer):
    def save(self, step, *args, **kwargs):
        if step >= 2:
            raise OSError("disk full")
        return super().save(step, *args, **kwargs)


class BrokenStore:
    def record(self, *args, **kwargs):
        raise RuntimeError("store bug")


@pytest.mark.parametrize("stage", ["detect", "diagnose", "remediate", "checkpoint", "store"])
def test_an_exception_in_any_stage_never_reaches_the_trainer(stage):
    parts = {"detector": WarmupZDetector(), "diagnoser": KlRuleDiagnoser(), "remediator": None, "incidents": None}
    if stage == "detect":
        parts["detector"] = BrokenDetector()
    elif stage == "diagnose":
        parts["diagnoser"] = BrokenDiagnoser()
    elif stage == "remediate":
        parts["remediator"] = BrokenRemediator()
    elif stage == "store":
        parts["incidents"] = BrokenStore()

    def attach(trainer):
        cb = RFTFMCallback.attach(trainer, **parts)
        if stage == "checkpoint":
            cb.checkpointer = BrokenCheckpointer()
        return cb

    trainer, cb, records = train(run_info(), attach)
    ctl = cb.controller
    planned = STEPS + ctl.length.replayed  # a working rollback trains the steps it discarded again
    assert trainer.state.global_step == planned and len(records) == planned  # training completed
    assert ctl.counts["errors"] >= 1
    if stage == "store":
        return  # nowhere to record; counted instead
    errors = ctl.store.events(kind="error")
    assert errors and errors[0]["payload"]["stage"] == stage
    assert ctl.mode == "alert_only" and ctl.counts["interventions"] == 0  # degraded to alert-only


def test_corrupt_checkpoint_falls_back_to_the_previous_one_in_a_live_run():
    class CorruptingCheckpointer(Checkpointer):
        def save(self, step, *args, **kwargs):
            info = super().save(step, *args, **kwargs)
            if step == ONSET - 2:  # the checkpoint the rollback would use
                (info.path / MODEL_FILE).write_bytes(b"truncated")
            return info

    def attach(trainer):
        cb = RFTFMCallback.attach(
            trainer,
            detector=WarmupZDetector(),
            diagnoser=KlRuleDiagnoser(),
            config=ControllerConfig(checkpoint_every=1),
        )
        cb.checkpointer = CorruptingCheckpointer(keep=8)
        return cb

    trainer, cb, _ = train(run_info(), attach)
    store = cb.controller.store
    rollback = [e for e in store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
    assert restored_step(rollback["payload"]["detail"]) == ONSET - 3
    assert any("checksum" in e["payload"]["error"] for e in store.events(kind="error"))
    assert trainer.state.global_step == STEPS + cb.controller.length.replayed


def test_plain_callback_on_trl_logs_can_roll_back_and_restore_the_lr():
    """Added with callbacks=[...]: only TRL's on_log dicts, the optimiser and control are available."""
    cb = RFTFMCallback(detector=WarmupZDetector(), diagnoser=None, run_id="plain")
    trainer, _, _ = train(run_info(), callbacks=[cb])
    ctl = cb.controller
    assert ctl.handle.capabilities().knobs == frozenset({"learning_rate"})
    assert ctl.counts["alarms"] >= 1 and ctl.counts["rollbacks"] >= 1
    actions = ctl.store.events(kind="action")
    # no diagnoser: the unknown ladder undoes the LR change since the healthy checkpoint
    assert actions[1]["payload"]["knob"] == "learning_rate"
    assert actions[1]["payload"]["previous"] == pytest.approx(9e-3) and actions[1]["payload"]["value"] == pytest.approx(
        3e-4
    )
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_step_record_from_trl_logs():
    rec = step_record_from_logs(
        "r", 4, {"loss": 0.1, "reward": 0.5, "kl": float("nan"), "completions/clipped_ratio": 0.25, "custom": 2}
    )
    assert rec.policy_loss == 0.1 and rec.reward_mean == 0.5 and rec.kl is None and rec.truncated_ratio == 0.25
    assert rec.extra == {"custom": 2.0}


class ScriptedDetector:
    """Alarms at the given (effective) steps with the given score; remembers the steps it saw."""

    def __init__(self, alarms: dict[int, float]):
        self.alarms, self.seen = alarms, []

    def reset(self, run_id, task_group=None, model_size=None):
        pass

    def observe(self, rec, trajectories):
        self.seen.append(rec.step)
        score = self.alarms.pop(rec.step, None)  # each scripted alarm fires once
        return None if score is None else Alarm(run_id=rec.run_id, step=rec.step, score=score, threshold=1.0)


def _controller(detector, state=None, diagnoser=None, max_steps=None, **config):
    from transformers import TrainerControl

    from rftfm.fm.handle import TrainerHandle
    from rftfm.fm.loop import Controller
    from rftfm.records import StepRecord

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"checkpoint_every": 1, "rollback_needs_regression": False, **config}
    ctl = Controller(detector, diagnoser or KlRuleDiagnoser(), run_id="u", config=ControllerConfig(**config))
    control = TrainerControl()
    max_steps = max_steps if max_steps is not None else state.max_steps if state is not None else None
    ctl.start(TrainerHandle(model=model, optimizer=opt, control=control, state=state), max_steps=max_steps)
    rec = lambda s: StepRecord(run_id="u", step=s, eval_accuracy=0.5, kl=0.01)  # noqa: E731
    return ctl, rec


def test_a_single_weak_alarm_is_reported_with_its_diagnosis_but_not_acted_on():
    ctl, rec = _controller(ScriptedDetector({4: 1.5}), diagnoser=FixedDiagnoser("lr_high"))
    for s in range(1, 9):
        ctl.observe(rec(s), [])
    assert ctl.counts["alarms"] == 1 and ctl.counts["interventions"] == 0
    diagnoses = ctl.store.events(kind="diagnosis")
    assert [d["step"] for d in diagnoses] == [4] and diagnoses[0]["payload"]["ranked"][0]["fault_type"] == "lr_high"
    assert not ctl.store.events(kind="action")


def test_repeated_alarms_act_and_the_detector_then_sees_effective_steps():
    det = ScriptedDetector({4: 1.5, 5: 1.5})
    ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"))
    for s in range(1, 9):
        ctl.observe(rec(s), [])
    assert ctl.counts["interventions"] == 1 and ctl.counts["rollbacks"] == 1
    rollback = [e for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
    restored = restored_step(rollback["payload"]["detail"])
    assert restored < 4
    # after the rollback at step 5 the detector's next step is the checkpoint's step + 1
    assert det.seen[:5] == [1, 2, 3, 4, 5] and det.seen[5] == restored + 1
    assert [h["step"] for h in ctl.history][-1] == det.seen[-1]


class FixedDiagnoser:
    def __init__(self, fault_type, probability=0.9):
        self.fault_type, self.probability = fault_type, probability

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        from rftfm.faults.taxonomy import FAULT_TYPES

        family = FAULT_TYPES[self.fault_type].family
        hypothesis = Hypothesis(family=family, fault_type=self.fault_type, probability=self.probability)
        return Diagnosis(run_id=run_id, step=step, ranked=[hypothesis], summary=self.fault_type)


class EvidenceDetector(ScriptedDetector):
    """Scripted alarms (by call number) carrying evidence on named signals."""

    def __init__(self, alarms: dict[int, tuple[str, ...]]):
        super().__init__({})
        self.by_call = alarms

    def observe(self, rec, trajectories):
        self.seen.append(rec.step)
        signals = self.by_call.get(len(self.seen))
        if signals is None:
            return None
        evidence = [SignalEvidence(signal=s, direction="up", z=3.0) for s in signals]
        return Alarm(run_id=rec.run_id, step=rec.step, score=1.5, threshold=1.0, evidence=evidence)


def test_after_a_repair_alarms_explained_by_the_upstream_cause_are_not_acted_on():
    from rftfm.fm.playbook import HALT, PLAYBOOK, Rung, _scale

    upstream = ("frac_zero_std_groups", "grad_norm")
    det = EvidenceDetector(
        {
            4: upstream,
            5: upstream,
            9: upstream,
            10: upstream,
            11: upstream,
            14: ("eval_accuracy",),
            15: ("eval_accuracy",),
        }
    )
    ctl, rec = _controller(det, diagnoser=FixedDiagnoser("zero_variance"))
    # this LR-only trainer has no resampling knob: a zero_variance ladder it can follow
    lr_rung = Rung("test: smaller steps", "[test]", knobs=(_scale("learning_rate", 0.5),))
    ctl.remediator = Remediator(playbook={**PLAYBOOK, "zero_variance": (lr_rung, lr_rung, HALT)})
    for s in range(1, 13):
        ctl.observe(rec(s), [])
    assert ctl.counts["interventions"] == 1 and ctl.counts["explained_alarms"] == 3
    explained = [e for e in ctl.store.events(kind="alarm") if e["payload"].get("explained_by")]
    assert len(explained) == 3 and explained[0]["payload"]["explained_by"] == "zero_variance"
    for s in range(13, 17):  # a deviation outside the upstream signals still counts
        ctl.observe(rec(s), [])
    assert ctl.counts["interventions"] == 2


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from rftfm.cli import app

    result = CliRunner().invoke(app, ["demo", "--steps", "10", "--onset", "5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "final comparison" in result.output and (tmp_path / "incidents.db").exists()
    assert (tmp_path / "demo.json").exists()


def test_an_alarm_nobody_can_explain_is_reported_not_acted_on_blindly():
    ctl, rec = _controller(ScriptedDetector({s: 5.0 for s in range(4, 12)}))  # KlRuleDiagnoser: unknown here
    for s in range(1, 14):
        ctl.observe(rec(s), [])
    assert ctl.counts["alarms"] == 8 and ctl.counts["interventions"] == 0 and ctl.mode == "watching"
    held = [e["payload"] for e in ctl.store.events(kind="outcome")]
    assert held and all(p["detail"] == "reported, not acted on" for p in held)


def test_an_unexplained_alarm_waits_until_it_persists_and_own_changes_are_not_drift():
    ctl, rec = _controller(ScriptedDetector({4: 1.5, 5: 1.5}))  # KlRuleDiagnoser: unknown here
    for s in range(1, 9):
        ctl.observe(rec(s), [])
    assert ctl.counts["alarms"] == 2 and ctl.counts["interventions"] == 0
    ctl, rec = _controller(ScriptedDetector({4: 1.5, 5: 1.5, 6: 1.5, 12: 1.5, 13: 1.5, 14: 1.5}))
    ctl.remediator = Remediator(blind_interventions=1)  # the opt-in: one blind intervention per run
    for s in range(1, 26):
        ctl.observe(rec(s), [])
    lrs = [e["payload"]["value"] for e in ctl.store.events(kind="action") if e["payload"]["knob"] == "learning_rate"]
    # unknown ladder: halve (nothing drifted); second unexplained incident: the loop's own halving is
    # not drift to undo, and the run's one blind intervention is spent -- reported, not acted on
    assert ctl.counts["interventions"] == 1 and lrs == [pytest.approx(5e-4)]
    assert ctl.mode == "watching"
    assert any(e["payload"]["detail"] == "reported, not acted on" for e in ctl.store.events(kind="outcome"))


def test_no_new_intervention_in_the_last_steps_where_it_cannot_be_revalidated():
    ctl, rec = _controller(ScriptedDetector({8: 1.5, 9: 1.5}), diagnoser=FixedDiagnoser("lr_high"), max_steps=10)
    for s in range(1, 11):
        ctl.observe(rec(s), [])
    assert ctl.counts["alarms"] == 2 and ctl.counts["interventions"] == 0
    assert any("too close to the end" in e["payload"]["action"]["reason"] for e in ctl.store.events(kind="outcome"))


def test_a_knob_rung_rolls_back_only_when_eval_accuracy_fell_since_the_checkpoint():
    from rftfm.records import StepRecord

    for accuracy_after, rolled_back in ((0.5, False), (0.3, True)):
        ctl, _ = _controller(
            ScriptedDetector({6: 1.5, 7: 1.5}), rollback_needs_regression=True, diagnoser=FixedDiagnoser("lr_high")
        )
        for s in range(1, 10):
            ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=0.5 if s < 5 else accuracy_after, kl=0.01), [])
        assert ctl.counts["interventions"] == 1 and ctl.counts["rollbacks"] == int(rolled_back)
        detail = [
            e["payload"]["detail"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"
        ][0]
        assert detail.startswith("to step") == rolled_back


def test_rollback_skips_the_checkpoint_that_generated_the_first_deviating_rollout():
    """A step's rollouts come from the previous update's weights: deviation first seen at step f
    means the checkpoint of step f - 1 is already suspect; and an onset at step 1 restores step 0."""
    for since, expected in ((6, 4), (1, 0)):
        det = ScriptedDetector({})
        det.observe = lambda rec, t, since=since: (
            Alarm(
                run_id="u",
                step=rec.step,
                score=5.0,
                threshold=1.0,
                evidence=[SignalEvidence(signal="kl", direction="up", z=5.0, since_step=since)],
            )
            if rec.step == max(since, 2) + 1
            else None
        )
        ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"))
        for s in range(1, 10):
            ctl.observe(rec(s), [])
        rollback = [e for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
        assert rollback["payload"]["detail"] == f"to step {expected}"


def test_a_rollback_extends_the_run_by_the_steps_it_discarded_within_the_replay_budget():
    """Resume semantics: the rolled-back run still gets its planned number of updates."""
    from transformers import TrainerState

    for fraction, added in ((0.5, 5), (0.1, 2), (0.0, 0)):
        state = TrainerState(max_steps=20)
        ctl, rec = _controller(
            ScriptedDetector({6: 1.5, 7: 1.5}),
            state=state,
            max_replay_fraction=fraction,
            diagnoser=FixedDiagnoser("lr_high"),
        )
        for s in range(1, 12):
            ctl.observe(rec(s), [])
        rollback = [
            e["payload"]["detail"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"
        ][0]
        assert rollback.startswith("to step 2")  # at step 7, so 5 effective steps were discarded
        assert state.max_steps == ctl.length.max_steps == 20 + added and ctl.length.replayed == added
        assert rollback.endswith(f"{added} step(s) added to train again") == bool(added)


def test_at_its_ceiling_eval_accuracy_is_no_reason_to_skip_a_rollback_that_can_be_replayed():
    from transformers import TrainerState

    from rftfm.records import StepRecord

    # (accuracy that holds, planned steps or None when the trainer's state is out of reach, rolled back?)
    for accuracy, max_steps, rolled_back in ((1.0, 20, True), (1.0, None, False), (0.5, 20, False)):
        state = TrainerState(max_steps=max_steps) if max_steps else None
        ctl, _ = _controller(
            ScriptedDetector({6: 1.5, 7: 1.5}),
            state=state,
            rollback_needs_regression=True,
            diagnoser=FixedDiagnoser("lr_high"),
        )
        for s in range(1, 10):
            ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=accuracy, kl=0.01), [])
        assert ctl.counts["rollbacks"] == int(rolled_back), (accuracy, max_steps)


def test_eval_accuracy_well_below_its_best_since_the_checkpoint_is_a_regression_to_roll_back():
    """A run still learning fast can fall from its peak and stay above an old checkpoint: the
    progress a rollback would discard is already lost, so it rolls back; a small dip does not."""
    from rftfm.records import StepRecord

    # the alarm at step 7 rolls back to checkpoint 2 (accuracy 0.3); the run climbed to 0.8 by step 5
    for dip, rolled_back in ((0.5, True), (0.75, False)):
        ctl, _ = _controller(
            ScriptedDetector({6: 1.5, 7: 1.5}), rollback_needs_regression=True, diagnoser=FixedDiagnoser("lr_high")
        )
        curve = {1: 0.2, 2: 0.3, 3: 0.5, 4: 0.7, 5: 0.8, 6: dip, 7: dip}
        for s in range(1, 10):
            ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=curve.get(s, dip), kl=0.01), [])
        assert ctl.counts["interventions"] == 1 and ctl.counts["rollbacks"] == int(rolled_back), dip
        detail = [
            e["payload"]["detail"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"
        ][0]
        assert detail.startswith("to step 2") if rolled_back else detail.startswith("skipped")


def test_a_rung_undoing_a_push_the_checkpoint_predates_rolls_back_even_while_accuracy_holds():
    """Replayed on their own batches, the steps since the push train as if it never happened: the
    rollback costs compute only, so the accuracy test does not apply (it still does without replays)."""
    from transformers import TrainerState

    for max_steps, rolled_back in ((20, True), (None, False)):
        state = TrainerState(max_steps=max_steps) if max_steps else None
        ctl, rec = _controller(
            ScriptedDetector({7: 1.5, 8: 1.5}),
            state=state,
            rollback_needs_regression=True,
            diagnoser=FixedDiagnoser("lr_low"),
        )
        for s in range(1, 11):
            if s == 4:  # a configuration push: the LR drops 100x; eval accuracy stays flat
                ctl.handle.set("learning_rate", 1e-5)
            ctl.observe(rec(s), [])
        rollback = [
            e["payload"]["detail"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"
        ][0]
        assert ctl.counts["rollbacks"] == int(rolled_back), max_steps
        assert rollback.startswith("to step 3" if rolled_back else "skipped"), (
            rollback
        )  # checkpoint 3 predates the push
        assert ctl.handle.get("learning_rate") == pytest.approx(1e-3)


def test_an_lr_cut_older_than_the_drift_window_is_still_what_an_lr_low_repair_undoes():
    ctl, rec = _controller(ScriptedDetector({20: 1.5, 21: 1.5}), diagnoser=FixedDiagnoser("lr_low"))
    for s in range(1, 24):
        if s == 3:  # 18 steps before the incident: outside the drift window, no longer "drift"
            ctl.handle.set("learning_rate", 1e-6)
        ctl.observe(rec(s), [])
    sets = [e["payload"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "set_knob"]
    assert len(sets) == 1 and "changed since" not in sets[0]["reason"]  # the lr_low ladder, not the drift rung
    assert sets[0]["value"] == pytest.approx(1e-3)  # back to before the cut, not 30 x 1e-6


def test_a_knob_pushed_mid_run_is_undone_even_when_every_checkpoint_postdates_it():
    ctl, rec = _controller(ScriptedDetector({9: 1.5, 10: 1.5}), diagnoser=FixedDiagnoser("lr_low"))
    for s in range(1, 12):
        if s == 3:  # a configuration push: the LR drops 100x
            ctl.handle.set("learning_rate", 1e-5)
        ctl.observe(rec(s), [])
    assert ctl.knob_log.pushes == {"learning_rate": (3, 1e-3)}  # the loop's own restore is not somebody else's change
    sets = [e["payload"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "set_knob"]
    assert sets and sets[0]["knob"] == "learning_rate" and sets[0]["value"] == pytest.approx(1e-3)
    assert "changed since" in sets[0]["reason"]
    assert ctl.handle.get("learning_rate") == pytest.approx(1e-3)
    rollback = [e["payload"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
    assert rollback["detail"] == "to step 2"  # to before the push: its checkpoint was pinned against pruning


def test_after_a_pushed_knob_is_undone_its_lingering_deviations_are_lag_not_new_symptoms():
    det = EvidenceDetector(
        {8: ("kl",), 9: ("kl",), 13: ("kl",), 14: ("kl",), 15: ("kl",), 17: ("entropy",), 18: ("entropy",)}
    )
    # (lr_high, so that the new incident's rung changes a knob: an lr_low rung finds the LR back at its ceiling)
    ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"))
    for s in range(1, 16):
        if s == 3:
            ctl.handle.set("learning_rate", 1e-5)
        ctl.observe(rec(s), [])
    assert ctl.counts["interventions"] == 1 and ctl.lag.signature == {("kl", "up")}
    lag = [e["payload"] for e in ctl.store.events(kind="alarm") if e["payload"].get("explanation")]
    assert len(lag) == 4 and all("lag" in p["explanation"] for p in lag)  # one push: the first alarm acted
    for s in range(16, 20):  # a deviation the incident did not have is a new symptom
        ctl.observe(rec(s), [])
    assert ctl.counts["interventions"] == 2


def test_lag_is_not_an_excuse_once_eval_accuracy_falls():
    from rftfm.records import StepRecord

    det = EvidenceDetector({8: ("kl",), 9: ("kl",), 13: ("kl",), 14: ("kl",)})
    ctl, _ = _controller(det, diagnoser=FixedDiagnoser("lr_high"))  # a rung that changes a knob (see above)
    for s in range(1, 16):
        if s == 3:
            ctl.handle.set("learning_rate", 1e-5)
        ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=0.5 if s < 12 else 0.3, kl=0.01), [])
    lag = [e["step"] for e in ctl.store.events(kind="alarm") if e["payload"].get("explanation")]
    assert all(s < 12 for s in lag)  # lag only while accuracy held
    assert ctl.counts["interventions"] == 2


def test_an_lr_schedule_is_not_a_knob_push_but_a_new_peak_lr_is():
    from transformers import TrainerControl

    from rftfm.fm.handle import TrainerHandle
    from rftfm.fm.loop import Controller

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))  # decays every step
    ctl = Controller(ScriptedDetector({}), None, run_id="u", config=ControllerConfig(checkpoint_every=1))
    ctl.start(TrainerHandle(model=model, optimizer=opt, scheduler=sched, control=TrainerControl()))
    rec = lambda s: StepRecord(run_id="u", step=s, eval_accuracy=0.5, kl=0.01)  # noqa: E731
    for s in range(1, 6):
        opt.step()
        sched.step()
        ctl.observe(rec(s), [])
    assert opt.param_groups[0]["lr"] < 1e-3 / 4 and ctl.knob_log.pushes == {}
    ctl.handle.set("learning_rate", 1e-2)  # somebody pushes a new peak LR
    ctl.observe(rec(6), [])
    assert ctl.knob_log.pushes == {"learning_rate": (6, 1e-3)}


def test_after_a_knob_push_one_alarm_is_enough_to_act():
    for push, interventions in ((False, 0), (True, 1)):
        ctl, rec = _controller(ScriptedDetector({8: 1.5}), diagnoser=FixedDiagnoser("lr_high"))
        for s in range(1, 10):
            if push and s == 5:
                ctl.handle.set("learning_rate", 1e-1)
            ctl.observe(rec(s), [])
        assert ctl.counts["interventions"] == interventions


class ThresholdDetector(ScriptedDetector):
    """Scores every step (0.7 at the scripted steps, 0.1 elsewhere) and alarms above its ``alarm_threshold``."""

    alarm_threshold = 1.0

    def observe(self, rec, trajectories):
        self.seen.append((rec.step, self.alarm_threshold))
        score = 0.7 if rec.step in self.alarms else 0.1
        if score <= self.alarm_threshold:
            return None
        return Alarm(run_id=rec.run_id, step=rec.step, score=score, threshold=self.alarm_threshold)


def test_while_a_knob_push_is_in_effect_the_detector_alarms_at_a_lower_score():
    for push, interventions in ((False, 0), (True, 1)):
        det = ThresholdDetector({8: 0.7})
        ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"))
        for s in range(1, 10):
            if push and s == 5:
                ctl.handle.set("learning_rate", 1e-1)
            ctl.observe(rec(s), [])
        assert ctl.counts["interventions"] == interventions  # a score of 0.7 alarms only after the push
        lowered = [step for step, threshold in det.seen if threshold < 1.0]
        assert lowered == ([5, 6, 7, 8] if push else [])  # from the push until the loop acted on it
    det = ThresholdDetector({8: 0.7})  # alert-only: nothing is done, but the push still lowers the threshold
    ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"), remediate=False)
    for s in range(1, 10):
        if s == 5:
            ctl.handle.set("learning_rate", 1e-1)
        ctl.observe(rec(s), [])
    assert ctl.counts["alarms"] == 1 and ctl.counts["interventions"] == 0


def test_a_rollback_target_already_pruned_falls_back_to_the_oldest_checkpoint_kept():
    det = ScriptedDetector({})
    det.observe = lambda rec, t: (
        Alarm(
            run_id="u",
            step=rec.step,
            score=5.0,
            threshold=1.0,
            evidence=[SignalEvidence(signal="kl", direction="up", z=5.0, since_step=5)],
        )
        if rec.step == 9
        else None
    )
    ctl, rec = _controller(det, diagnoser=FixedDiagnoser("lr_high"))
    ctl.checkpointer.keep = 2
    for s in range(1, 11):
        ctl.observe(rec(s), [])
    rollback = [e for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
    assert rollback["payload"]["detail"] == "to step 7"  # wanted <= 3; 7 and 8 are all that is kept
    assert any("restored the oldest" in e["payload"]["error"] for e in ctl.store.events(kind="error"))


def test_a_used_up_knob_ladder_halts_only_when_eval_accuracy_fell():
    from rftfm.records import StepRecord

    for falling, halted in ((False, False), (True, True)):
        ctl, _ = _controller(
            ScriptedDetector({s: 1.5 for s in range(4, 30)}),
            rollback_needs_regression=True,
            diagnoser=FixedDiagnoser("lr_high"),
        )
        for s in range(1, 30):
            accuracy = 0.2 if falling and s >= 4 else 0.5
            ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=accuracy, kl=0.01), [])
        assert (ctl.mode == "halted") == halted
        if not halted:
            assert ctl.mode == "alert_only"
            assert any(
                "no halt while eval accuracy holds" in e["payload"]["action"]["reason"]
                for e in ctl.store.events(kind="outcome")
            )


def test_a_code_fault_diagnosed_with_confidence_halts_while_accuracy_holds():  # (FixedDiagnoser: p = 0.9)
    ctl, rec = _controller(ScriptedDetector({4: 1.5, 5: 1.5}), diagnoser=FixedDiagnoser("advantage_sign"))
    for s in range(1, 8):
        ctl.observe(rec(s), [])
    assert ctl.mode == "halted"


class AlarmsFromCall(ScriptedDetector):
    """Alarms at every record from its ``first``-th on, whatever the step (a fault a rollback does not undo)."""

    def __init__(self, first: int):
        super().__init__({})
        self.first = first

    def observe(self, rec, trajectories):
        self.seen.append(rec.step)
        if len(self.seen) < self.first:
            return None
        return Alarm(run_id=rec.run_id, step=rec.step, score=1.5, threshold=1.0)


class SequenceDiagnoser:
    """Diagnoses ``(type, p)`` in call order; the last one repeats."""

    def __init__(self, *answers: tuple[str, float]):
        self.answers, self.calls = list(answers), 0

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        self.calls += 1
        return FixedDiagnoser(*self.answers[min(self.calls, len(self.answers)) - 1]).diagnose(history, run_id, step)


def test_a_code_fault_behind_a_knob_push_halts_when_undoing_the_push_does_not_clear_it():
    # an fp16 blow-up whose injection also pushed the LR: the push is undone first (rollback + restore); the
    # anomaly persists, and the diagnoser, reading the repair's aftermath, is unsure of a knob fault instead
    diagnoser = SequenceDiagnoser(("numerical_blowup", 0.95), ("sampling_temperature", 0.6))
    ctl, rec = _controller(AlarmsFromCall(8), diagnoser=diagnoser)
    for s in range(1, 20):
        if s == 3:
            ctl.handle.set("learning_rate", 3e-2)
        ctl.observe(rec(s), [])
    actions = [e["payload"] for e in ctl.store.events(kind="action")]
    assert "changed since" in actions[0]["reason"] and actions[1]["knob"] == "learning_rate"  # the push undone
    assert ctl.mode == "halted" and actions[-1]["kind"] == "halt"  # then the blow-up's own ladder, on p = 0.95
    assert "numerical_blowup" in [e["payload"].get("fault_type") for e in ctl.store.events(kind="action")][-1]


class StepDiagnoser:
    """Diagnoses ``(type, p)`` by step: the last entry at or before the step."""

    def __init__(self, by_step: dict[int, tuple[str, float]]):
        self.by_step = by_step

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        fixed = FixedDiagnoser(*self.by_step[max(s for s in self.by_step if s <= step)])
        return fixed.diagnose(history, run_id, step)


def _stood_down_then_settled(remediate: bool = True, broken_store: bool = False):
    """A code fault diagnosed at p = 0.5 (halt refused: alert-only), then at p = 1 from step 12 (a blow-up's NaNs)."""
    diagnoser = StepDiagnoser({1: ("numerical_blowup", 0.5), 12: ("numerical_blowup", 1.0)})
    ctl, rec = _controller(ScriptedDetector({s: 1.5 for s in (4, 5, 12, 13)}), diagnoser=diagnoser,
                           remediate=remediate)
    if broken_store:
        ctl.journal.store = BrokenStore()
    for s in range(1, 16):
        ctl.observe(rec(s), [])
    return ctl


def test_after_standing_down_a_settled_code_fault_is_still_rolled_back_and_halted():
    ctl = _stood_down_then_settled()
    timeline = [(step, kind) for step, kind, _ in ctl.timeline]
    assert (5, "outcome") in timeline  # p = 0.5 at steps 4-5: not halted, alert-only
    assert ctl.mode == "halted" and ctl.counts["rollbacks"] == 1
    actions = [e for e in ctl.store.events(kind="action")]
    assert [(e["step"], e["payload"]["kind"]) for e in actions] == [(13, "rollback"), (13, "halt")]
    # rolled back to before the first deviating step of the settled alarms (12 - lookback - lag), not to step 0
    assert 0 < restored_step(actions[0]["payload"]["detail"]) < 12
    from rftfm.fm.narrative import narrate

    told = narrate(ctl.store.events(), "u")  # the end-of-training narrative says why it waited, then what it did
    assert "Earlier, at step 5, an alarm was reported, not acted on (numerical_blowup: a halt needs" in told
    assert "at step 13: rolled back to step" in told and "halted at step 13" in told


def test_a_settled_code_fault_does_not_wake_a_loop_the_user_made_alert_only_or_one_an_error_stopped():
    assert _stood_down_then_settled(remediate=False).counts["actions"] == 0
    errored = _stood_down_then_settled(broken_store=True)  # every record fails: the loop stops acting
    assert errored.mode == "alert_only" and errored.counts["actions"] == 0


class MissingNumbersDiagnoser:
    """A blow-up at p = 0.6 on a grad norm missing since ``since(step)`` up to step 9; ``lr_high`` from step 10."""

    def __init__(self, since):
        self.since = since

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        if step >= 10:
            return FixedDiagnoser("lr_high").diagnose(history, run_id, step)
        gone = SignalEvidence(signal="grad_norm", direction="up", non_finite=True, since_step=self.since(step))
        hypothesis = Hypothesis(family="od", fault_type="numerical_blowup", probability=0.6)
        return Diagnosis(run_id=run_id, step=step, ranked=[hypothesis], evidence=[gone], summary="numerical_blowup")


def test_an_unsure_blowup_on_one_records_missing_numbers_leaves_the_loop_acting_on_later_alarms():
    def run(since):
        ctl, rec = _controller(ScriptedDetector({s: 1.5 for s in (4, 5, 10, 11)}),
                               diagnoser=MissingNumbersDiagnoser(since))
        for s in range(1, 16):
            ctl.observe(rec(s), [])
        return ctl

    pending = run(lambda step: step)  # an fp16 loss scaler's skipped step at the alarm: reported, not halted
    assert any("judged again at the next alarm" in e["payload"]["action"]["reason"]
               for e in pending.store.events(kind="outcome"))
    assert pending.mode != "alert_only" and pending.counts["interventions"] == 1  # the lr_high alarms are acted on
    assert [e["payload"]["kind"] for e in pending.store.events(kind="action")][-1] == "set_knob"
    settled_unsure = run(lambda step: 3)  # missing for several records at p = 0.6: not sure, stands down as before
    assert settled_unsure.mode == "alert_only" and settled_unsure.counts["interventions"] == 0


class HistoryDiagnoser(FixedDiagnoser):
    """A fixed diagnosis; keeps the history it was handed."""

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        self.history = history
        return super().diagnose(history, run_id, step, task_group, model_size)


def test_the_diagnoser_reads_the_users_schedule_not_the_loops_own_learning_rate_cut():
    from rftfm.fm.features import HISTORY_SCHEMA
    from rftfm.fm.schedule import recent_jump

    diagnoser = HistoryDiagnoser("lr_high")
    # one checkpoint, at the start: the second cut's rollback restores the learning rate the first cut had changed
    ctl, _ = _controller(ScriptedDetector({4: 1.5, 5: 1.5, 6: 1.5, 7: 1.5, 8: 1.5}), diagnoser=diagnoser,
                         checkpoint_every=100)
    optimizer, logged = ctl.handle.optimizer, []
    for s in range(1, 16):
        logged.append(optimizer.param_groups[0]["lr"])  # what a trainer logs: the learning rate in use
        ctl.observe(StepRecord(run_id="u", step=s, eval_accuracy=0.5, kl=0.01, learning_rate=logged[-1]), [])
    assert min(logged) == pytest.approx(1e-5) and logged[0] == pytest.approx(1e-3)  # the loop cut it twice ...
    assert diagnoser.history["learning_rate"].to_list() == pytest.approx([1e-3] * diagnoser.history.height)
    history = pl.DataFrame(ctl.history, schema=HISTORY_SCHEMA).sort("step")  # what the next diagnosis reads
    assert history.height >= 3 and history["learning_rate"].to_list() == pytest.approx([1e-3] * history.height)
    steps = history["step"].to_numpy()
    assert recent_jump(history["learning_rate"].to_numpy(), steps, recent=len(steps)) == (0.0, None)  # ... unseen
    cut = min(h["step"] for h in ctl.history if h["loop_lr_scale"] != 1.0)
    ctl.sensing.rewind(cut - 1)  # a rollback to before the cut: the checkpoint's optimiser has the user's learning rate
    assert ctl.sensing.lr_scale == 1.0


def test_undoing_a_pushed_learning_rate_after_a_rollback_is_no_change_of_the_loops_own():
    """A push x30 at step 3, then the loop rolls back to step 2 (whose checkpoint has the user's learning rate) and
    sets it back: measured from the value read before the rollback that would be a /30 cut of the loop's own."""
    ctl, _ = _controller(ScriptedDetector({}))
    sensing = ctl.sensing
    for step, lr in ((1, 1e-3), (2, 1e-3), (3, 3e-2), (4, 3e-2)):
        sensing.detect(StepRecord(run_id="u", step=step, learning_rate=lr), [], 0)
    sensing.rewind(2, learning_rate=1e-3)
    sensing.knob_set("learning_rate", 3e-2, 1e-3)
    sensing.detect(StepRecord(run_id="u", step=3, learning_rate=1e-3), [], 0)
    assert sensing.lr_scale == 1.0 and [h["learning_rate"] for h in sensing.history] == [1e-3] * 3


def test_a_users_grpo_trainer_with_the_mixin_resumes_exactly_after_a_rollback(tmp_path):
    """Not the embedded engine: a plain TRL GRPOTrainer subclass with BatchReplayMixin. A rollback
    that changes nothing (no fault, no knob) must then leave the run exactly as it was without it."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rftfm.engine.sft import load_warm_start, warm_start_path
    from rftfm.engine.tasks import task_group
    from rftfm.engine.tokenizer import build_tokenizer
    from rftfm.integrations.trl_callback import BatchReplayMixin
    from rftfm.testing import OnsetAlarm, RollbackOnly

    class UserTrainer(BatchReplayMixin, GRPOTrainer):
        pass

    problems = task_group("arith_a").problems(32, seed=5)  # more than 8 steps need: room for the replayed ones
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])
    load_warm_start("arith_a", "xs")

    def exact_answer(prompts, completions, answer, **_):
        return [float(c.strip() == str(a)) for c, a in zip(completions, answer)]

    def run(name, callbacks=()):
        config = GRPOConfig(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=8,
            num_generations=4,
            max_steps=8,
            learning_rate=3e-4,
            lr_scheduler_type="constant",
            max_completion_length=8,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=5,
            data_seed=5,
            disable_tqdm=True,
            dataloader_num_workers=0,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = UserTrainer(
            model=str(warm_start_path("arith_a", "xs")),
            args=config,
            reward_funcs=[exact_answer],
            train_dataset=dataset,
            processing_class=build_tokenizer(),
        )
        for cb in callbacks:
            cb.bind(trainer)
            trainer.add_callback(cb)
        trainer.train()
        return trainer

    plain = run("plain")
    callback = RFTFMCallback(
        detector=OnsetAlarm(2),
        diagnoser=None,
        remediator=RollbackOnly(),
        config=ControllerConfig(rollback_needs_regression=False),
    )
    resumed = run("resumed", [callback])
    assert callback.setup_error is None, callback.setup_error
    rollback = [e["payload"] for e in callback.controller.store.events(kind="action")][0]
    assert rollback["kind"] == "rollback" and "discarded batch(es) come again" in rollback["detail"], rollback
    assert resumed.state.global_step == 8 + callback.controller.length.replayed > 8
    a, b = plain.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_evaluations_loop_arm_has_an_eval_callable_that_measures_the_start_and_nothing_the_engine_logs():
    """``rftfm bench evaluate remediation``'s loop arms hand the loop the engine's held-out evaluation, as a user hands
    ``eval_fn``: the accuracy before the first step is known (a fault from step 1 can be shown to have cost accuracy
    against it), and no step the engine already evaluates is evaluated twice; the train-side arm has none."""
    from rftfm.bench.eval_remediation import run_arm
    from rftfm.engine.policy_eval import eval_accuracy

    components = (WarmupZDetector(), KlRuleDiagnoser())
    _, callback = run_arm(run_info("normal"), "on", components=components)
    heldout = callback.controller.heldout
    assert heldout.evaluations == 1 and 0 in heldout.at  # the start only
    assert set(heldout.at) == {0, *range(1, STEPS + 1)}  # the engine logs one at every step of this run
    trainer = callback.trainer
    assert heldout.at[STEPS] == pytest.approx(eval_accuracy(trainer.model, trainer.task, trainer.eval_problems))
    _, train_side = run_arm(run_info("normal"), "trainside", components=components)
    assert train_side.controller.heldout.eval_fn is None and train_side.controller.heldout.evaluations == 0
