"""What the loop decides from: eval accuracy from the records, from the user's eval callable, or none.

Small real objects (a linear model, AdamW, TRL's TrainerControl); no trainer run.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm.handle import TrainerHandle
from rftfm.fm.loop import Controller
from rftfm.fm.policy import ControllerConfig
from rftfm.fm.types import Alarm, Diagnosis, Hypothesis
from rftfm.records import StepRecord

torch.set_num_threads(1)


class Alarms:
    """Alarms (score 5, threshold 1: strong) at the given steps."""

    def __init__(self, steps):
        self.steps = set(steps)

    def reset(self, run_id, task_group=None, model_size=None):
        pass

    def observe(self, rec, trajectories):
        return Alarm(run_id=rec.run_id, step=rec.step, score=5.0, threshold=1.0) if rec.step in self.steps else None


class Fixed:
    def __init__(self, fault_type, p=0.9):
        self.fault_type, self.p = fault_type, p

    def diagnose(self, history, run_id, step, task_group=None, model_size=None):
        ftype = FAULT_TYPES[self.fault_type]
        return Diagnosis(
            run_id=run_id,
            step=step,
            ranked=[Hypothesis(family=ftype.family, fault_type=self.fault_type, probability=self.p)],
        )


def controller(alarms, fault_type, p=0.9, eval_fn=None, scheduler=None, **config):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = ControllerConfig(**{"checkpoint_every": 1, **config})
    ctl = Controller(Alarms(alarms), Fixed(fault_type, p), run_id="u", config=cfg, eval_fn=eval_fn)
    ctl.start(
        TrainerHandle(
            model=model, optimizer=opt, scheduler=scheduler, control=TrainerControl(), state=TrainerState(max_steps=40)
        ),
        max_steps=40,
    )
    return ctl


def run(ctl, steps, accuracy=None):
    for s in range(1, steps + 1):
        ctl.observe(StepRecord(run_id="u", step=s, kl=0.01, eval_accuracy=accuracy(s) if accuracy else None), [])


def test_without_eval_accuracy_a_used_up_knob_ladder_reports_instead_of_halting():
    ctl = controller(range(4, 30), "lr_high")
    run(ctl, 30)  # train-side alarms only: rung after rung, but no evidence the run is getting worse
    assert ctl.mode == "alert_only" and ctl.counts["interventions"] == 2
    refusal = [e["payload"] for e in ctl.store.events(kind="outcome") if e["payload"]["result"] == "failed"][-1]
    assert "no halt without a measured fall in eval accuracy" in refusal["action"]["reason"]
    end = ctl.finish()
    assert end["accuracy_steps"] == 0 and end["evaluations"] == 0


def test_a_code_fault_halts_on_a_confident_diagnosis_not_on_a_weak_one():
    for p, halted in ((0.9, True), (0.5, False)):
        ctl = controller([4, 5], "advantage_sign", p=p)
        run(ctl, 8)
        assert (ctl.mode == "halted") == halted, p
        assert ctl.mode in ("halted", "alert_only")


def test_with_eval_accuracy_in_the_records_a_knob_ladder_halts_once_it_falls():
    ctl = controller(range(4, 30), "lr_high", rollback_needs_regression=False)
    run(ctl, 30, accuracy=lambda s: 0.5 if s < 4 else 0.2)
    assert ctl.mode == "halted"


def test_an_eval_callable_is_run_at_the_start_every_k_steps_and_for_a_decision():
    calls = []

    def eval_fn(model):
        calls.append(model)
        return 0.5

    ctl = controller([7], "lr_high", eval_fn=eval_fn, eval_every=4, checkpoint_every=2)  # start() evaluates at 0
    run(ctl, 6)
    assert sorted(k for k, v in ctl.heldout.at.items() if v is not None) == [0, 4]  # start, then every 4 steps
    run_from = len(calls)
    ctl.observe(StepRecord(run_id="u", step=7, kl=0.01), [])  # one strong alarm: the rung's rollback decides
    assert len(calls) == run_from + 1 and ctl.heldout.at[7] == 0.5  # measured for the decision at step 7
    rollback = [e["payload"] for e in ctl.store.events(kind="action") if e["payload"]["kind"] == "rollback"][0]
    assert rollback["detail"].startswith("skipped: eval accuracy 0.500")  # it had not fallen: nothing to undo
    summary = ctl.finish()
    assert summary["evaluations"] == len(calls) == 3 and summary["eval_seconds"] >= 0
    # what the end-of-run cost tells about checkpoints: how many, their time, the interval in use
    assert summary["checkpoints"] >= 3 and summary["checkpoint_seconds"] > 0 and summary["checkpoint_every"] == 2
    start = ctl.store.events(kind="run")[0]["payload"]
    assert start["eval_every"] == 4 and all(m is ctl.handle.model for m in calls)


def test_a_failing_eval_callable_is_recorded_and_the_loop_goes_alert_only():
    def broken(model):
        raise RuntimeError("eval server down")

    ctl = controller([], "lr_high", eval_fn=broken, eval_every=2)
    run(ctl, 4)
    errors = ctl.store.events(kind="error")
    assert errors and errors[0]["payload"]["stage"] == "eval" and ctl.mode == "alert_only"


def test_checkpoints_follow_the_logged_steps_when_the_trainer_logs_every_few_steps():
    ctl = controller([], "lr_high", checkpoint_every=2)
    for s in (5, 10, 15, 20):  # logging_steps = 5
        ctl.observe(StepRecord(run_id="u", step=s, kl=0.01), [])
    assert ctl.checkpointer.steps() == [0, 5, 10, 15, 20][-ctl.checkpointer.keep :]


def test_setting_the_lr_during_warm_up_scales_the_lr_in_use_and_sets_the_peak():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))  # linear warm-up
    for _ in range(4):
        opt.step()
        sched.step()
    handle = TrainerHandle(model=model, optimizer=opt, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and handle.get("learning_rate") == pytest.approx(1e-3)
    handle.set("learning_rate", 1e-4)  # a tenth of the peak: the warm-up goes on from a tenth of where it stood
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5) and handle.get("learning_rate") == pytest.approx(1e-4)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(6e-5)
    constant = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    TrainerHandle(model=model, optimizer=constant).set("learning_rate", 3e-4)
    assert constant.param_groups[0]["lr"] == 3e-4  # exactly the value, no rounding through a ratio
