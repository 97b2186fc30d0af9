"""The remediation policy's rules, one by one, on plain data (no trainer, no detector)."""

from __future__ import annotations

import pytest

from rftfm.fm import policy
from rftfm.fm.policy import AlarmFacts, ControllerConfig, HaltCase, Lag, NewIncident, RollbackCase
from rftfm.fm.types import Action, SignalEvidence

CFG = ControllerConfig()


def ev(signal: str, z: float | None = 3.0, direction: str = "up") -> SignalEvidence:
    return SignalEvidence(signal=signal, direction=direction, z=z)


def test_a_single_weak_alarm_is_not_confirmed_but_a_strong_repeated_or_pushed_one_is():
    weak = AlarmFacts(step=10, score=1.5, threshold=1.0)
    assert not policy.confirmed(weak, [10], CFG)
    assert policy.confirmed(AlarmFacts(10, 2.0, 1.0), [10], CFG)  # score >= 2 x threshold
    assert policy.confirmed(weak, [8, 10], CFG)  # two within the 3-step window
    assert not policy.confirmed(weak, [7, 10], CFG)  # the earlier one fell out of the window
    assert not policy.confirmed(weak, [10, 11, 12], CFG)  # later alarms do not confirm an earlier one
    assert policy.confirmed(weak, [10], CFG, after_push=True)
    assert not policy.is_strong(AlarmFacts(10, 5.0, 0.0), CFG)  # a zero threshold is never strong


def test_a_knob_push_in_effect_within_the_drift_window_makes_one_alarm_enough():
    pushes = {"learning_rate": (5, 1e-3)}
    assert policy.pushed_recently(pushes, {"learning_rate": 1e-1}, step=8, cfg=CFG)
    assert not policy.pushed_recently(pushes, {"learning_rate": 1e-3}, step=8, cfg=CFG)  # set back since
    assert not policy.pushed_recently(pushes, {"learning_rate": 1e-1}, step=5 + CFG.drift_window, cfg=CFG)


def test_the_drift_window_counts_logged_records():
    # a trainer logging every 10 steps (TRL's default): a push at step 100 shows at the record of step 110, and an
    # incident confirmed at the record of step 120 is 2 records after it -- still the prime suspect
    every_10 = policy.per_record(CFG, 10)
    pushes, now = {"entropy_coef": (100, 0.0)}, {"entropy_coef": -3.0}
    assert every_10.drift_steps == 10 * CFG.drift_window and CFG.drift_steps == CFG.drift_window
    assert policy.pushed_recently(pushes, now, step=120, cfg=every_10)
    assert not policy.pushed_recently(pushes, now, step=120, cfg=CFG)
    assert policy.rollback_before(120, [120], [116], pushes, every_10) == 99  # to before the push
    assert policy.rollback_before(120, [120], [116], pushes, CFG) == 114  # every step logged: 20 records back
    assert policy.healthy_knobs({"entropy_coef": -3.0}, pushes, {}, incident_start=120, cfg=every_10) == {
        "entropy_coef": 0.0
    }
    assert policy.healthy_knobs({"entropy_coef": -3.0}, pushes, {}, incident_start=120, cfg=CFG) == {
        "entropy_coef": -3.0
    }


def test_the_rollback_checkpoint_predates_the_rollouts_of_the_first_deviating_step():
    # evidence dates the onset to step 6: its rollouts came from step 5's update, so checkpoint <= 4
    assert policy.rollback_before(9, [9], [6], {}, CFG) == 4
    # no onset in the evidence: 2 steps before the first alarm of the window (8 -> 6), then - 2
    assert policy.rollback_before(9, [8, 9], [], {}, CFG) == 4
    # an onset long before the alarm is clamped to 4 steps before it (slow drifts roll back little)
    assert policy.rollback_before(20, [20], [3], {}, CFG) == 14
    # a recent knob push is the prime suspect: roll back to before it
    assert policy.rollback_before(9, [9], [6], {"learning_rate": (3, 1e-3)}, CFG) == 2
    assert policy.rollback_before(2, [2], [1], {}, CFG) == 0  # never below the initial checkpoint


def incident(**kw) -> NewIncident:
    facts = {
        "step": 10,
        "explained_by_diagnosis": True,
        "drifted": False,
        "unexplained_alarms": 1,
        "blind_budget_used": False,
        "max_steps": 30,
    }
    return NewIncident(**{**facts, **kw})


def test_an_alarm_nobody_can_explain_waits_until_it_persists_then_gets_one_blind_intervention():
    waiting = policy.hold_back(incident(explained_by_diagnosis=False, unexplained_alarms=2), CFG)
    assert waiting is not None and waiting.reason == "" and not waiting.alert_only  # timeline note, no outcome
    assert policy.hold_back(incident(explained_by_diagnosis=False, unexplained_alarms=3), CFG) is None
    spent = policy.hold_back(incident(explained_by_diagnosis=False, unexplained_alarms=3, blind_budget_used=True), CFG)
    assert spent is not None and spent.detail == "reported, not acted on" and "blind" in spent.reason
    # a knob that changed since the checkpoint explains the alarm: no waiting, no blind budget
    assert policy.hold_back(incident(explained_by_diagnosis=False, drifted=True, blind_budget_used=True), CFG) is None
    assert policy.hold_back(incident(), CFG) is None  # a diagnosed alarm goes ahead


def test_without_eval_accuracy_only_a_confident_diagnosis_or_a_knob_push_is_acted_on():
    unsure = policy.hold_back(incident(has_eval=False, probability=0.3), CFG)
    assert unsure is not None and unsure.reason.startswith("diagnosis at p=0.30") and not unsure.alert_only
    assert policy.hold_back(incident(has_eval=False, probability=0.7), CFG) is None
    assert policy.hold_back(incident(has_eval=False, probability=0.3, drifted=True), CFG) is None
    assert policy.hold_back(incident(has_eval=False, probability=None, generic=True), CFG) is None
    assert policy.hold_back(incident(has_eval=True, probability=0.3), CFG) is None  # eval accuracy checks the repair
    # the next rung of an incident: the same confidence rule, none of the new-incident ones
    assert policy.hold_back(incident(has_eval=False, probability=0.3, escalating=True), CFG) is not None
    assert policy.hold_back(incident(explained_by_diagnosis=False, escalating=True, step=29, max_steps=30), CFG) is None


def test_no_repair_starts_when_fewer_steps_remain_than_its_revalidation_needs():
    late = policy.hold_back(incident(step=28, max_steps=30), CFG)
    assert late is not None and "too close to the end" in late.reason
    assert policy.hold_back(incident(step=27, max_steps=30), CFG) is None
    assert policy.hold_back(incident(step=28, max_steps=None), CFG) is None  # length unknown


def halt(**kw) -> HaltCase:
    facts = {
        "fault_type": "lr_high",
        "code_fault": False,
        "probability": 0.9,
        "accuracy_then": 0.5,
        "accuracy_now": 0.3,
    }
    return HaltCase(**{**facts, **kw})


def test_a_halt_needs_a_diagnosis_and_measured_evidence():
    assert policy.halt_refused(halt(), CFG) is None  # knob ladder used up, eval accuracy fell: halt
    refused = policy.halt_refused(halt(accuracy_now=0.5), CFG)  # ... but it holds: alert-only instead
    assert refused is not None and refused.alert_only and "0.500" in refused.detail
    unknown = policy.halt_refused(halt(accuracy_then=None), CFG)  # nothing shows the run getting worse
    assert unknown is not None and "measured fall" in unknown.reason
    blind = policy.halt_refused(halt(fault_type=None), CFG)  # nobody could explain the alarm
    assert blind is not None and blind.alert_only and "needs a diagnosed fault" in blind.reason
    assert policy.halt_refused(halt(accuracy_now=0.5), ControllerConfig(halt_needs_regression=False)) is None


def test_a_code_fault_halts_on_a_confident_diagnosis_or_a_measured_fall():
    code = {"fault_type": "advantage_sign", "code_fault": True, "accuracy_then": 0.5, "accuracy_now": 0.5}
    assert policy.halt_refused(halt(**code, probability=0.85), CFG) is None  # accuracy holds, but a sure diagnosis
    unsure = policy.halt_refused(halt(**code, probability=0.6), CFG)
    assert unsure is not None and unsure.alert_only and "p=0.60" in unsure.note
    assert policy.halt_refused(halt(**{**code, "accuracy_now": 0.3}, probability=0.6), CFG) is None  # it fell: halt
    assert policy.halt_refused(halt(**{**code, "accuracy_then": None}, probability=None), CFG) is not None


def test_an_unsure_code_fault_resting_on_one_records_missing_numbers_is_reported_without_standing_down():
    from rftfm.fm.types import Diagnosis, Hypothesis

    def diagnosed(*since: int | None) -> Diagnosis:
        gone = [SignalEvidence(signal="grad_norm", direction="up", non_finite=True, since_step=s) for s in since]
        return Diagnosis(run_id="r", step=20, evidence=[*gone, SignalEvidence(signal="kl", direction="up", z=4.0)],
                         ranked=[Hypothesis(family="od", fault_type="numerical_blowup", probability=0.6)])

    assert policy.one_record_missing(diagnosed(20))  # missing from the diagnosed record alone
    assert not policy.one_record_missing(diagnosed(19))  # two records: the detector's rule, settled
    assert not policy.one_record_missing(diagnosed(20, 18)) and not policy.one_record_missing(diagnosed())
    assert not policy.one_record_missing(None)
    code = {"fault_type": "numerical_blowup", "code_fault": True, "accuracy_then": 0.5, "accuracy_now": 0.5}
    pending = policy.halt_refused(halt(**code, probability=0.6, pending=True), CFG)
    assert pending is not None and not pending.alert_only and "judged again at the next alarm" in pending.reason
    assert policy.halt_refused(halt(**code, probability=0.85, pending=True), CFG) is None  # sure enough: halt
    assert policy.halt_refused(halt(**{**code, "accuracy_now": 0.3}, probability=0.6, pending=True), CFG) is None


def test_a_halt_rests_on_the_mass_of_the_family_types_that_end_the_same_way():
    from rftfm.fm.types import Diagnosis, Hypothesis

    d = Diagnosis(
        run_id="r",
        step=3,
        ranked=[
            Hypothesis(family="ca", fault_type="advantage_normalization", probability=0.55),
            Hypothesis(family="ca", fault_type="advantage_sign", probability=0.3),
            Hypothesis(family="ca", fault_type="zero_variance", probability=0.1),  # a knob ladder: not summed
            Hypothesis(family="od", fault_type="kl_dropped", probability=0.05),  # "rollback + halt", other family
        ],
    )
    # sign bug or broken normalisation: the loop rolls back and halts either way, so their mass adds up
    assert policy.halt_probability(d, "advantage_sign") == pytest.approx(0.85)
    assert policy.halt_probability(d, "zero_variance") == pytest.approx(0.1)
    assert policy.halt_probability(d, "kl_dropped") == pytest.approx(0.05)
    assert policy.halt_probability(d, "tool_failure") is None and policy.halt_probability(None, "lr_high") is None


def test_after_standing_down_only_a_confirmed_alarm_that_settles_a_code_fault_acts():
    from rftfm.fm.types import Diagnosis, Hypothesis

    def d(*ranked: tuple[str, str, float]) -> Diagnosis:
        return Diagnosis(run_id="r", step=9, ranked=[Hypothesis(family=f, fault_type=t, probability=p)
                                                     for f, t, p in ranked])

    strong, weak = AlarmFacts(9, 2.5, 1.0), AlarmFacts(9, 1.5, 1.0)
    blowup = d(("od", "numerical_blowup", 1.0))
    assert policy.settled_code_fault(blowup, strong, [9], CFG) == "numerical_blowup"
    assert policy.settled_code_fault(blowup, weak, [9], CFG) is None  # one weak alarm confirms nothing
    assert policy.settled_code_fault(blowup, weak, [8, 9], CFG) == "numerical_blowup"
    # summed as for any halt: a sign bug or a broken normalisation, rollback + halt either way
    advantage = d(("ca", "advantage_sign", 0.5), ("ca", "advantage_normalization", 0.4))
    assert policy.settled_code_fault(advantage, strong, [9], CFG) == "advantage_sign"
    assert policy.settled_code_fault(d(("ca", "advantage_sign", 0.6)), strong, [9], CFG) is None  # not sure enough
    assert policy.settled_code_fault(d(("rf", "reward_none", 1.0)), strong, [9], CFG) is None  # a knob ladder
    assert policy.settled_code_fault(None, strong, [9], CFG) is None


def test_periodic_tasks_are_due_at_the_first_logged_step_past_each_multiple():
    assert [s for s in range(1, 9) if policy.due(s - 1, s, 2)] == [2, 4, 6, 8]  # every step logged
    assert [s for s in (5, 10, 15, 20) if policy.due(s - 5, s, 2)] == [5, 10, 15, 20]  # logging_steps=5
    assert [s for s in (5, 10, 15, 20) if policy.due(s - 5, s, 10)] == [10, 20]
    assert policy.due(4, 4, 2) and not policy.due(5, 5, 2)  # the same step logged again


def test_the_accuracy_of_a_checkpoint_between_evaluations_is_the_one_before_it():
    acc = {0: 0.4, 5: None, 10: 0.6, 12: float("nan")}
    assert policy.accuracy_at_or_before(acc, 8) == 0.4 and policy.accuracy_at_or_before(acc, 12) == 0.6
    assert policy.accuracy_at_or_before({3: 0.5}, 2) is None


def test_knob_changes_the_loop_did_not_make_are_pushes_and_its_own_are_not():
    seen = {"learning_rate": 1e-3, "beta": 0.04}
    assert policy.new_pushes({"learning_rate": 1e-5, "beta": 0.04}, seen, {}, {}, 7, CFG) == {
        "learning_rate": (7, 1e-3)
    }
    assert policy.new_pushes({"learning_rate": 5e-4, "beta": 0.04}, seen, {"learning_rate": 5e-4}, {}, 7, CFG) == {}
    # pushed again within the drift window: the first push (and the value before it) stands
    assert (
        policy.new_pushes({"learning_rate": 1e-6}, {"learning_rate": 1e-5}, {}, {"learning_rate": (7, 1e-3)}, 9, CFG)
        == {}
    )
    assert policy.new_pushes(
        {"learning_rate": 1e-6}, {"learning_rate": 1e-5}, {}, {"learning_rate": (7, 1e-3)}, 19, CFG
    ) == {"learning_rate": (19, 1e-5)}


def test_healthy_knob_values_undo_recent_pushes_and_keep_the_loops_own_repairs():
    checkpoint = {"learning_rate": 1e-2, "beta": 0.04, "temperature": 1.0}
    pushes = {"learning_rate": (8, 1e-3), "beta": (1, 0.0)}  # the beta push is older than the drift window
    healthy = policy.healthy_knobs(checkpoint, pushes, {"temperature": 0.8}, incident_start=15, cfg=CFG)
    assert healthy == {"learning_rate": 1e-3, "beta": 0.04, "temperature": 0.8}
    assert policy.drifted({"learning_rate": 1e-2, "beta": 0.04}, healthy)
    assert not policy.drifted({"learning_rate": 1e-3}, healthy)


def test_after_a_repair_upstream_evidence_and_the_lag_of_an_undone_push_are_explained():
    up = policy.explained
    assert (
        up([ev("grad_norm", 3.8), ev("entropy", -0.3)], "zero_variance", Lag(), None, CFG) == "the known upstream cause"
    )
    assert up([ev("grad_norm", 3.8), ev("entropy", -2.5)], "zero_variance", Lag(), None, CFG) is None
    assert up([ev("entropy", 0.5)], "zero_variance", Lag(), None, CFG) is None
    assert up([ev("grad_norm", 1.5)], "zero_variance", Lag(), None, CFG) is not None  # only weak evidence: all of it
    assert up([], "zero_variance", Lag(), None, CFG) is None
    # dynamic sampling trains on a refilled batch: its reward and length statistics and the loss's level move with it
    refilled = [
        ev("traj_advantage_zeroed", None), ev("reward_mean", 3.1), ev("traj_long_rate", -8.4), ev("policy_loss", None)
    ]
    assert up(refilled, "zero_variance", Lag(), None, CFG) == "the known upstream cause"
    assert up([*refilled, ev("kl", -2.9)], "zero_variance", Lag(), None, CFG) is None  # the KL is the trainer's own
    # a verifier asked again (or averaged) still scores identical completions apart: no new symptom
    for repaired in ("reward_noise", "reward_none", "tool_failure"):
        assert up([ev("repeat_reward_disagreements", None)], repaired, Lag(), None, CFG) == "the known upstream cause"
    assert up([ev("repeat_reward_disagreements", None)], "entropy_collapse", Lag(), None, CFG) is None
    assert up([*refilled, ev("eval_accuracy", -2.5)], "zero_variance", Lag(), None, CFG) is None
    lag = Lag(frozenset({("kl", "up")}), accuracy=0.5)
    assert up([ev("kl")], None, lag, 0.49, CFG) == "the lag of an undone knob change"
    assert up([ev("kl")], None, lag, 0.3, CFG) is None  # eval accuracy fell: a new symptom
    assert up([ev("kl")], None, lag, None, CFG) is None  # no accuracy to vouch for it
    assert up([ev("kl", direction="down")], None, lag, 0.5, CFG) is None  # not the incident's own deviation


def test_the_lag_to_expect_is_set_only_by_a_rung_that_undid_a_pushed_knob():
    actions = [Action(kind="rollback"), Action(kind="set_knob", knob="learning_rate", value=1e-3)]
    evidence = [(5, frozenset({("kl", "up")})), (9, frozenset({("entropy", "down")})), (10, frozenset({("kl", "up")}))]
    lag = policy.lag_after(
        actions, True, {"learning_rate": (4, 1e-3)}, evidence, incident_start=10, accuracy=0.4, cfg=CFG
    )
    assert lag == Lag(frozenset({("kl", "up"), ("entropy", "down")}), 0.4)
    assert policy.lag_after(actions, False, {"learning_rate": (4, 1e-3)}, evidence, 10, 0.4, CFG) is None
    assert policy.lag_after(actions, True, {}, evidence, 10, 0.4, CFG) is None


def test_eval_accuracy_helpers():
    acc = {1: 0.2, 2: 0.4, 3: None, 4: float("nan"), 5: 0.8, 6: 0.6}
    assert policy.recent_accuracy(acc, 6) == pytest.approx(0.7)
    assert policy.recent_accuracy(acc, 4) is None
    assert policy.accuracy_holds(0.5, 0.48, CFG) == 0.48
    assert policy.accuracy_holds(0.5, 0.4, CFG) is None
    assert policy.accuracy_holds(None, 0.9, CFG) is None and policy.accuracy_holds(float("nan"), 0.9, CFG) is None
    assert policy.best_two_step_mean(acc, 0, 7) == pytest.approx(0.8)  # (4, 5): the NaN is left out
    assert policy.best_two_step_mean(acc, 6, 7) is None


def test_a_rung_undoing_a_push_the_checkpoint_predates_resumes_before_it():
    undo = [Action(kind="set_knob", knob="learning_rate", value=1e-3)]
    pushes = {"learning_rate": (4, 1e-3)}
    assert policy.resumes_before_push(undo, pushes, checkpoint_step=3)
    assert not policy.resumes_before_push(undo, pushes, checkpoint_step=4)
    assert not policy.resumes_before_push([Action(kind="set_knob", knob="learning_rate", value=3e-4)], pushes, 3)


def case(**kw) -> RollbackCase:
    facts = {
        "halt_rung": False,
        "accuracy_then": 0.5,
        "accuracy_now": 0.5,
        "peak": 0.5,
        "replayable": True,
        "undoes_earlier_push": False,
    }
    return RollbackCase(**{**facts, **kw})


def test_a_knob_rung_rolls_back_only_when_the_run_regressed_since_the_checkpoint():
    assert policy.skip_rollback(case(), CFG) == 0.5  # nothing to undo: keep the weights
    assert policy.skip_rollback(case(accuracy_now=0.4), CFG) is None  # fell since the checkpoint
    assert policy.skip_rollback(case(accuracy_then=None), CFG) is None  # unknown: roll back
    assert policy.skip_rollback(case(halt_rung=True), CFG) is None  # a halt stops on the restored weights
    assert policy.skip_rollback(case(peak=0.7), CFG) is None  # 0.2 below its best since the checkpoint
    assert policy.skip_rollback(case(peak=0.55), CFG) == 0.5  # a small dip
    assert policy.skip_rollback(case(accuracy_then=1.0, accuracy_now=1.0, peak=1.0), CFG) is None  # at its ceiling
    assert policy.skip_rollback(case(accuracy_then=1.0, accuracy_now=1.0, peak=1.0, replayable=False), CFG) == 1.0
    assert policy.skip_rollback(case(undoes_earlier_push=True), CFG) is None  # replayed, it costs compute only
    assert policy.skip_rollback(case(undoes_earlier_push=True, replayable=False), CFG) == 0.5
    assert policy.skip_rollback(case(), ControllerConfig(rollback_needs_regression=False)) is None


def test_the_facts_of_a_rollback_without_a_checkpoint_left_say_roll_back():
    facts = policy.rollback_case([], False, None, {5: 0.5, 6: 0.5}, 6, {}, replayable=True)
    assert facts.accuracy_then is None and not facts.replayable and policy.skip_rollback(facts, CFG) is None
    facts = policy.rollback_case([], False, 2, {2: 0.5, 3: 0.9, 4: 0.9, 5: 0.5, 6: 0.5}, 6, {}, replayable=False)
    assert facts.peak == pytest.approx(0.9) and policy.skip_rollback(facts, CFG) is None


def test_revalidation_escalates_on_an_alarm_or_a_clear_accuracy_drop_and_keeps_a_quiet_window():
    verdict = policy.revalidation_verdict
    assert verdict(True, 1, [0.5], 0.5, CFG) == policy.Verdict("escalated", "alarm again 1 step(s) after the action")
    assert verdict(False, 2, [0.5, 0.5], 0.5, CFG) is None  # window still open
    dropped = verdict(False, 3, [0.2, 0.25, None], 0.5, CFG)
    assert dropped is not None and dropped.result == "escalated" and "well below" in dropped.detail
    assert verdict(False, 3, [0.45, 0.5, 0.4], 0.5, CFG) == policy.Verdict("kept", "no alarm for 3 steps")
    assert verdict(False, 3, [None, None, None], 0.5, CFG).result == "kept"  # no accuracy: alarms alone decide


def test_the_replay_budget_is_a_fraction_of_the_planned_steps():
    assert policy.replay_budget(40, 5, CFG) == 15
    assert policy.replay_budget(None, 0, CFG) == 0


def test_a_knob_rung_that_would_change_nothing_is_not_acted_on():
    held = policy.changes_nothing(True, 0, ["temperature"])
    assert held is not None and "temperature" in held.reason and not held.alert_only
    assert policy.changes_nothing(True, 1, ["temperature"]) is None  # another knob does change
    assert policy.changes_nothing(False, 0, []) is None  # a rollback-only or halt rung
    assert policy.changes_nothing(True, 0, []) is None  # no knob this trainer can set (a rung reduced by capabilities)


def test_the_alarm_threshold_is_lowered_only_while_a_knob_push_is_in_effect():
    assert policy.alarm_threshold(False, CFG) == 1.0  # healthy runs get no pushes: their false-alarm budget holds
    assert policy.alarm_threshold(True, CFG) == CFG.push_alarm_threshold < 1.0


def test_checkpoint_interval_that_fits_the_budget():
    assert policy.checkpoint_every_within(1.0, 100.0, 2) is None  # 1 %: within 5 %
    assert policy.checkpoint_every_within(20.0, 100.0, 2) == 8  # 20 % at every 2 -> 5 % at every 8
    assert policy.checkpoint_every_within(None, 100.0, 2) is None
    assert policy.checkpoint_every_within(3.0, 0.0, 2) is None


def test_the_confirmation_windows_count_logged_records_when_a_trainer_logs_every_few_steps():
    from rftfm.fm.ledger import RunLength

    weak = AlarmFacts(20, 1.2, 1.0)
    assert not policy.confirmed(weak, [15, 20], CFG)  # two alarms 5 steps apart: a window of 3 steps holds one
    every5 = policy.per_record(CFG, 5)
    assert every5.record_steps == 5 and every5.confirm_steps == 15 and every5.unknown_confirm_steps == 20
    assert policy.confirmed(weak, [15, 20], every5)  # ... two records in a row for a trainer logging every 5 steps
    assert not policy.confirmed(weak, [5, 20], every5)
    assert policy.per_record(CFG, 1) is CFG
    assert policy.rollback_before(20, [15, 20], [], {}, every5) < policy.rollback_before(20, [15, 20], [], {}, CFG)
    length = RunLength()
    for real in (5, 10, 15, 30):  # a record missing between 15 and 30: the logging interval is the fewest steps
        length.step(real, 100)
    assert length.record_steps == 5
    assert RunLength().record_steps is None
