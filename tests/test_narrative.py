"""The incident log told in words: what was seen, done, what it cost, what to look at."""

from __future__ import annotations

from rftfm.fm.incidents import MemoryIncidentStore
from rftfm.fm.narrative import narrate
from rftfm.fm.types import Action, Alarm, Diagnosis, Hypothesis, Outcome, SignalEvidence


def lr_push_run() -> MemoryIncidentStore:
    store = MemoryIncidentStore()
    store.record("run", "r", 0, {"event": "start", "mode": "watching", "eval_every": None})
    store.record(
        "alarm",
        "r",
        39,
        Alarm(
            run_id="r", step=39, score=3.0, threshold=1.0, evidence=[SignalEvidence(signal="kl", direction="up", z=6.0)]
        ),
    )
    store.record(
        "diagnosis",
        "r",
        39,
        Diagnosis(
            run_id="r",
            step=39,
            summary="lr_high since step 31: KL x40",
            ranked=[Hypothesis(family="od", fault_type="lr_high", probability=0.9)],
        ),
    )
    store.record(
        "action",
        "r",
        39,
        {
            **Action(kind="rollback", reason="a trainer knob changed since the last healthy checkpoint").model_dump(),
            "detail": "to step 28; 11 step(s) added",
        },
    )
    store.record(
        "action",
        "r",
        39,
        {
            **Action(
                kind="set_knob",
                knob="learning_rate",
                value=3e-4,
                previous=9e-3,
                reason="restore learning_rate: changed since the last healthy checkpoint",
            ).model_dump(),
            "detail": "0.009 -> 0.0003",
        },
    )
    store.record(
        "outcome",
        "r",
        42,
        Outcome(action=Action(kind="rung", reason="knob_drift"), result="kept", detail="no alarm for 3 steps"),
    )
    store.record(
        "run",
        "r",
        91,
        {
            "event": "end",
            "mode": "watching",
            "replayed": 11,
            "monitor_seconds": 2.9,
            "wall_seconds": 30.0,
            "accuracy_steps": 0,
            "evaluations": 0,
        },
    )
    return store


def test_a_repaired_push_is_told_with_its_cost_and_what_to_look_at():
    text = narrate(lr_push_run().events(), run_id="r")
    assert "Seen: 1 alarm(s) from step 39 to 39 (kl up)" in text and "lr_high (p=0.90)" in text
    assert "at step 39: rolled back to step 28; 11 step(s) added, set learning_rate 0.009 -> 0.0003" in text
    assert "kept at step 42" in text
    assert "11 step(s) trained again after rollbacks" in text and "2.9 s (9.7 % of 30 s)" in text
    assert "learning_rate was changed to 0.009 by something other than the loop" in text
    assert "train-side metrics alone" in text  # no held-out evaluation in this run


def test_a_quiet_run_an_alert_only_run_and_a_halted_one():
    store = MemoryIncidentStore()
    store.record("run", "q", 0, {"event": "start", "mode": "watching", "eval_every": 10})
    store.record(
        "run",
        "q",
        80,
        {
            "event": "end",
            "mode": "watching",
            "accuracy_steps": 9,
            "evaluations": 9,
            "eval_seconds": 1.5,
            "monitor_seconds": 0.4,
        },
    )
    quiet = narrate(store.events())
    assert "no alarm" in quiet and "Done: nothing." in quiet and "9 held-out evaluation(s) taking 1.5 s" in quiet
    assert "every 10 steps" in quiet
    store = MemoryIncidentStore()
    store.record("run", "a", 0, {"event": "start", "mode": "alert_only"})
    store.record("alarm", "a", 5, Alarm(run_id="a", step=5, score=2.0, threshold=1.0))
    assert "alert-only: the loop does not act" in narrate(store.events())
    store = MemoryIncidentStore()
    store.record("run", "u", 0, {"event": "start", "mode": "watching"})
    store.record("alarm", "u", 5, Alarm(run_id="u", step=5, score=1.2, threshold=1.0))
    store.record("diagnosis", "u", 5, Diagnosis(run_id="u", step=5, ranked=[
        Hypothesis(family="od", fault_type="lr_high", probability=0.4)]))
    unconfirmed = narrate(store.events())
    assert "a weak alarm waits for a second" in unconfirmed and "Diagnosis at step 5: lr_high" in unconfirmed
    store = MemoryIncidentStore()
    store.record("run", "h", 0, {"event": "start", "mode": "watching"})
    store.record(
        "diagnosis",
        "h",
        3,
        Diagnosis(run_id="h", step=3, ranked=[Hypothesis(family="ca", fault_type="advantage_sign", probability=0.95)]),
    )
    store.record("action", "h", 3, {"kind": "halt", "detail": "stop requested"})
    store.record("run", "h", 3, {"event": "end", "mode": "halted"})
    halted = narrate(store.events())
    assert "stopped training" in halted and "advantage computation" in halted and "fix the cause" in halted


def test_checkpoints_that_cost_more_than_the_budget_are_told_with_the_interval_that_fits_it():
    store = MemoryIncidentStore()
    store.record("run", "c", 0, {"event": "start", "mode": "watching"})
    end = {"event": "end", "mode": "watching", "monitor_seconds": 4.0, "wall_seconds": 20.0}
    store.record("run", "c", 40, {**end, "checkpoints": 21, "checkpoint_seconds": 3.0, "checkpoint_every": 2})
    text = narrate(store.events())
    assert "of it 21 checkpoint(s) 3.0 s" in text
    # 15 % of the wall time at every 2 steps: every 6 keeps them at 5 %
    assert "checkpoints took 15 % of the run's wall time: ControllerConfig(checkpoint_every=6)" in text
    assert "a rollback may then discard up to 4 more step(s)" in text
    store = MemoryIncidentStore()
    store.record("run", "d", 40, {**end, "checkpoints": 21, "checkpoint_seconds": 0.5, "checkpoint_every": 2})
    assert "checkpoint_every=" not in narrate(store.events())  # 2.5 %: within the budget


def test_it_says_whether_learning_rate_jumps_were_judged() -> None:
    for judged, scheduler, text in ((True, "linear", "checked for a jump no schedule makes"),
                                    (False, "cosine_with_restarts", "cosine_with_restarts scheduler jumps by design")):
        store = MemoryIncidentStore()
        store.record("run", "r", 0, {"event": "learning-rate schedule", "scheduler": scheduler, "jumps_judged": judged})
        assert text in narrate(store.events())


def test_a_sure_diagnosis_the_loop_could_not_act_on_still_says_where_to_look():
    store = MemoryIncidentStore()
    store.record("run", "v", 0, {"event": "start", "mode": "watching"})
    store.record("alarm", "v", 7, Alarm(run_id="v", step=7, score=9.0, threshold=1.0))
    ranked = [Hypothesis(family="rf", fault_type="reward_none", probability=1.0)]
    store.record("diagnosis", "v", 7, Diagnosis(run_id="v", step=7, ranked=ranked))
    store.record("run", "v", 10, {"event": "end", "mode": "alert_only"})
    told = narrate(store.events())
    assert "for reward_none: the reward function or verifier" in told and "nothing needs fixing" not in told
    unsure = [Hypothesis(family="rf", fault_type="reward_none", probability=0.5)]
    store.record("diagnosis", "v", 8, Diagnosis(run_id="v", step=8, ranked=unsure))
    assert "nothing needs fixing unless the signals above look wrong to you" in narrate(store.events())


def test_a_fault_a_reward_rule_saw_names_its_family_when_the_type_is_not_sure():
    def run(first: SignalEvidence) -> str:
        store = MemoryIncidentStore()
        store.record("run", "r", 0, {"event": "start", "mode": "watching", "eval_every": None})
        store.record("alarm", "r", 1, Alarm(run_id="r", step=1, score=5.0, threshold=1.0, evidence=[first]))
        store.record("diagnosis", "r", 1, Diagnosis(
            run_id="r", step=1, summary="reward_noise since step 1", evidence=[first],
            ranked=[Hypothesis(family="rf", fault_type="reward_noise", probability=0.56),
                    Hypothesis(family="rf", fault_type="reward_hacking", probability=0.44)],
        ))
        return narrate(store.events())

    seen = run(SignalEvidence(signal="repeat_reward_disagreements", direction="up", value=7.0, expected=0.0))
    assert "for a fault of the rf family (closest: reward_noise, p=0.56): the reward function or verifier" in seen
    guessed = run(SignalEvidence(signal="reward_std", direction="up", z=4.0))  # the model's guess alone
    assert "nothing needs fixing unless the signals above look wrong to you" in guessed
