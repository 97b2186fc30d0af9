"""Knobs pushed mid-run, as the TRL callback's knob ledger sees them, told to the diagnoser: the types that push one
of them are ranked first (half the mass on top of the model's), never made certain."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rftfm.bench.eval_diagnosis import pushed_at
from rftfm.faults.injectors.base import INJECTORS, KnobPush
from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import policy
from rftfm.fm.diagnose import Diagnoser, Seen
from rftfm.fm.features import step_features
from rftfm.fm.incidents import MemoryIncidentStore
from rftfm.fm.ledger import Journal, KnobLedger
from rftfm.fm.sensing import Sensing
from rftfm.fm.types import Diagnosis
from rftfm.records import StepRecord

CFG = policy.ControllerConfig()


def test_the_registry_names_the_knobs_each_knob_push_sets() -> None:
    pushing = {t: f.pushed_knobs for t, f in FAULT_TYPES.items() if f.pushed_knobs}
    assert set(pushing) == {t for t in FAULT_TYPES if issubclass(INJECTORS[t], KnobPush)}
    assert pushing["sampling_temperature"] == ("temperature",)
    assert set(pushing["degeneration"]) == {"repetition_penalty", "eos_bias"}
    assert set(pushing["length_clip_all"]) == {"max_completion_length", "mask_truncated_completions"}


def test_the_ledger_names_the_knobs_pushed_lately_and_still_pushed() -> None:
    pushes = {"temperature": (5, 1.0), "beta": (2, 0.04)}
    now = {"temperature": 2.2, "beta": 0.04}  # beta was set back since
    assert policy.recent_pushes(pushes, now, step=8, cfg=CFG) == ["temperature"]
    assert policy.recent_pushes(pushes, now, step=5 + CFG.drift_steps, cfg=CFG) == []
    assert policy.pushed_recently(pushes, now, step=8, cfg=CFG)
    ledger = KnobLedger(seen=now, pushes=pushes)  # what the loop hands the diagnoser
    assert ledger.recent(8, CFG) == ["temperature"]


def test_a_pushed_knob_ranks_its_types_first_short_of_certainty() -> None:
    diagnoser = Diagnoser.load_default()
    classes = diagnoser.classes
    prob = np.full((2, len(classes)), 1e-3)
    prob[:, classes.index("degeneration")] = 0.9
    prob /= prob.sum(1, keepdims=True)
    base = Seen([], 0.0, None, [], [], False, False, False)
    seen = [base, Seen(**{**base.__dict__, "pushed": ("temperature",)})]
    out, unknown = diagnoser.apply_seen(prob, np.ones(2, dtype=bool), seen)
    np.testing.assert_allclose(out[0], prob[0])
    assert unknown[0] and not unknown[1]
    assert out[1].argmax() == classes.index("sampling_temperature")
    assert 0.5 < out[1, classes.index("sampling_temperature")] < 1.0


def _history(steps: int = 16) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s in range(1, steps + 1):
        record = StepRecord(
            run_id="user", step=s, reward_mean=0.4 + 0.01 * s + rng.normal(0, 0.02), reward_std=0.4,
            kl=0.002 * s, entropy=0.9 - 0.01 * s, grad_norm=1.0 + rng.normal(0, 0.05), policy_loss=rng.normal(0, 0.01),
            completion_length_mean=30.0 + rng.normal(0, 1), learning_rate=1e-5,
        )
        rows.append({"run_id": "user", "step": s, **step_features(record, [])})
    return pl.DataFrame(rows)


def test_the_shipped_diagnoser_told_of_a_temperature_push_names_it_first() -> None:
    history = _history()
    diagnoser = Diagnoser.load_default()
    diagnoser.know_pushed(["temperature"])
    pushed = diagnoser.diagnose(history, "user", 16)
    assert not pushed.unknown and pushed.top.fault_type == "sampling_temperature" and pushed.top.probability < 1.0
    diagnoser.know_pushed([])
    plain = diagnoser.diagnose(history, "user", 16)
    assert plain.unknown or plain.top.fault_type != "sampling_temperature"


def test_the_loops_sensing_tells_the_diagnoser_what_was_pushed_before_each_diagnosis() -> None:
    class Told:
        def __init__(self) -> None:
            self.pushed: list[tuple[str, ...]] = []

        def know_pushed(self, knobs):
            self.pushed.append(tuple(knobs))

        def diagnose(self, history, run_id, step, task_group=None, model_size=None):
            return Diagnosis(run_id=run_id, step=step, ranked=[], unknown=True, summary="")

    told = Told()
    journal = Journal(MemoryIncidentStore(), "user", 100)
    sensing = Sensing(None, told, journal, lambda stage, fn: (True, fn()), task_group=None, model_size=None,
                      max_history=100)
    sensing.diagnose(5, 0, ["temperature"])
    sensing.diagnose(6, 0)
    assert told.pushed == [("temperature",), ()]


@pytest.mark.parametrize(
    ("run", "alarm", "expected"),
    [
        ({"control_or_fault": "fault", "fault_type": "sampling_temperature", "onset_step": 12}, 14, ("temperature",)),
        ({"control_or_fault": "fault", "fault_type": "sampling_temperature", "onset_step": 1}, 3, ()),  # configured
        ({"control_or_fault": "fault", "fault_type": "sampling_temperature", "onset_step": 2}, 30, ()),  # long ago
        ({"control_or_fault": "fault", "fault_type": "lr_high", "onset_step": 12}, 14, ()),  # not a knob push
        ({"control_or_fault": "control", "fault_type": "sampling_temperature", "onset_step": 12}, 14, ()),
    ],
)
def test_the_evaluation_tells_what_the_trainers_ledger_would_have_seen(run, alarm, expected) -> None:
    assert pushed_at(run, list(range(1, 31)), alarm) == expected


def test_a_plain_trl_runs_pushed_temperature_is_named_and_undone(tmp_path) -> None:
    """A plain GRPOTrainer whose temperature is pushed to 3 at step 20: the loop's diagnosis at that record names
    `sampling_temperature` (the code before this rule named `degeneration` here), and its rung undoes the push."""
    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.testing import user_run as ur

    trainer = ur.user_trainer(tmp_path / "pushed", steps=30, seed=0,
                              spike=ur.KnobPush(onset=20, knob="temperature", value=3.0))
    callback = RFTFMCallback.attach(trainer, report=False)
    trainer.train()
    diagnosis = callback.controller.store.events(kind="diagnosis")[0]
    assert diagnosis["step"] == 20 and diagnosis["payload"]["ranked"][0]["fault_type"] == "sampling_temperature"
    events = callback.controller.store.events(kind="action")
    actions = [(e["payload"]["kind"], e["payload"].get("detail")) for e in events]
    assert actions[0][0] == "rollback" and ("set_knob", "3 -> 1") in actions
    assert trainer.temperature == 1.0
