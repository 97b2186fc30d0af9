"""The remediation playbook covers the taxonomy, and the remediator climbs it within bounds."""

from __future__ import annotations

import pytest

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm.playbook import GENERIC_LADDER, PLAYBOOK, KnobChange, check_playbook, ends_in_halt_only, ladder
from rftfm.fm.remediate import Capabilities, Remediator, resolve_knob
from rftfm.fm.types import Diagnosis, Hypothesis
from rftfm.knobs import KNOBS

ALL = Capabilities(knobs=frozenset(KNOBS), rollback=True, halt=True)


def diagnosis(fault_type: str | None, p: float = 0.9) -> Diagnosis:
    if fault_type is None:
        return Diagnosis(run_id="r", step=5, ranked=[], unknown=True)
    fam = FAULT_TYPES[fault_type].family
    return Diagnosis(
        run_id="r", step=5, ranked=[Hypothesis(family=fam, fault_type=fault_type, probability=p)], summary="s"
    )


def test_every_registry_type_has_a_consistent_ladder():
    assert set(PLAYBOOK) == set(FAULT_TYPES)
    assert check_playbook() == []
    for name, rungs in PLAYBOOK.items():
        assert rungs[-1].halt and rungs[-1].rollback, name
        assert all(k.knob in KNOBS for r in rungs for k in r.knobs)
        assert ladder(name) == rungs


def test_types_no_knob_repairs_end_in_halt_without_knobs():
    for name, ftype in FAULT_TYPES.items():
        assert ends_in_halt_only(name) == (not ftype.knob_repairable), name


def test_resolve_knob_restore_scale_set_and_bounds():
    restore = KnobChange("learning_rate", "restore", fallback_factor=0.1, rel_bounds=(0.01, 10.0))
    assert resolve_knob(restore, 9e-3, 3e-4) == pytest.approx(3e-4)  # drifted: undo the drift
    assert resolve_knob(restore, 3e-4, 3e-4) == pytest.approx(3e-5)  # no drift: fallback factor
    scale = KnobChange("learning_rate", "scale", factor=100.0, rel_bounds=(0.01, 10.0))
    assert resolve_knob(scale, 3e-4, 3e-4) == pytest.approx(3e-3)  # clamped at 10x healthy
    length = KnobChange("max_completion_length", "scale", factor=2.0, abs_bounds=(4, 32))
    assert resolve_knob(length, 3, 10) == 6 and isinstance(resolve_knob(length, 3, 10), int)
    assert resolve_knob(KnobChange("scale_rewards", "set", value="group"), "none", "group") == "group"


def test_a_restore_without_drift_since_the_checkpoint_undoes_an_older_push_before_any_fallback():
    raise_lr = KnobChange("learning_rate", "restore", fallback_factor=30.0, rel_bounds=(1.0, 100.0), direction="up")
    # the LR was cut to 9e-7 long before the healthy checkpoint: go back to 3e-4, not 30 x 9e-7
    assert resolve_knob(raise_lr, 9e-7, 9e-7, pushed_from=3e-4) == pytest.approx(3e-4)
    assert resolve_knob(raise_lr, 9e-7, 9e-7) == pytest.approx(2.7e-5)  # nobody pushed it: the fallback
    # a push the other way is not what this restore undoes (the diagnosis says the LR is too low)
    assert resolve_knob(raise_lr, 3e-4, 3e-4, pushed_from=1e-5) == pytest.approx(9e-3)


def test_remediator_climbs_the_ladder_then_stops():
    rem = Remediator(max_interventions=5, drift_first=False)
    knobs = {"learning_rate": 9e-3}
    healthy = {"learning_rate": 3e-4}
    first = rem.plan(diagnosis("lr_high"), ALL, knobs, healthy)
    assert first.rung_index == 0 and [a.kind for a in first.actions] == ["rollback", "set_knob"]
    assert first.actions[1].value == pytest.approx(3e-4)
    second = rem.plan(diagnosis("lr_high"), ALL, {"learning_rate": 3e-4}, healthy, escalate=True)
    assert second.rung_index == 1 and second.actions[-1].value == pytest.approx(3e-5)
    third = rem.plan(diagnosis("lr_high"), ALL, knobs, healthy, escalate=True)
    assert [a.kind for a in third.actions] == ["rollback", "halt"]
    assert rem.plan(diagnosis("lr_high"), ALL, knobs, healthy, escalate=True) is None


def test_intervention_budget_is_bounded():
    rem = Remediator(max_interventions=2, drift_first=False)
    assert rem.plan(diagnosis("lr_low"), ALL, {"learning_rate": 1e-6}, {"learning_rate": 1e-6}) is not None
    assert rem.plan(diagnosis("kl_misconfig"), ALL, {"beta": 5.0}, {"beta": 0.04}) is not None
    assert rem.exhausted
    assert rem.plan(diagnosis("lr_high"), ALL, {}, {}) is None


def test_capabilities_filter_rungs():
    # no backup verifier registered: reward_hacking goes straight to rollback + halt
    plan = Remediator().plan(diagnosis("reward_hacking"), ALL, {}, {})
    assert [a.kind for a in plan.actions] == ["rollback", "halt"]
    with_backup = Capabilities(knobs=ALL.knobs, rollback=True, halt=True, backups=frozenset({"verifier"}))
    plan = Remediator().plan(diagnosis("reward_hacking"), with_backup, {}, {})
    assert [a.kind for a in plan.actions] == ["backup_verifier", "rollback"]
    # a trainer that exposes only the learning rate cannot restore the temperature: skip to halt
    lr_only = Capabilities(knobs=frozenset({"learning_rate"}), rollback=True, halt=True)
    plan = Remediator().plan(diagnosis("sampling_temperature"), lr_only, {"learning_rate": 1e-3}, {})
    assert plan.rung.halt


def test_low_confidence_and_unknown_use_the_unknown_ladder_and_generic_ignores_diagnosis():
    assert (
        Remediator(min_confidence=0.5).plan(
            diagnosis("lr_high", p=0.2), ALL, {"learning_rate": 1e-3}, {"learning_rate": 1e-3}
        )
        is None
    )  # no blind intervention by default
    rem = Remediator(min_confidence=0.5, blind_interventions=1)
    plan = rem.plan(diagnosis("lr_high", p=0.2), ALL, {"learning_rate": 1e-3}, {"learning_rate": 1e-3})
    assert plan.fault_type is None and plan.actions[-1].value == pytest.approx(5e-4)  # nothing drifted: halve
    drifted = Remediator().plan(
        diagnosis(None),
        ALL,
        {"learning_rate": 1e-3, "temperature": 2.2, "beta": 0.04},
        {"learning_rate": 1e-3, "temperature": 1.0, "beta": 0.04},
    )
    assert [(a.kind, a.knob, a.value) for a in drifted.actions] == [
        ("rollback", None, None),
        ("set_knob", "temperature", 1.0),
    ]
    generic = Remediator(generic=True, max_interventions=3)
    for _ in range(3):
        plan = generic.plan(diagnosis("sampling_temperature"), ALL, {"learning_rate": 1e-3, "temperature": 2.2}, {})
        assert plan.rung == GENERIC_LADDER[0]
        assert [a.kind for a in plan.actions] == ["rollback", "set_knob"] and plan.actions[1].knob == "learning_rate"
    assert generic.plan(diagnosis(None), ALL, {"learning_rate": 1e-3}, {}) is None


def test_directional_restore_never_reinstates_a_faulty_value():
    # the "healthy" checkpoint was taken after a silent onset: its LR is the faulty one
    down = KnobChange("learning_rate", "restore", fallback_factor=0.1, direction="down")
    assert resolve_knob(down, 3e-4, 1.8e-3) == pytest.approx(3e-5)
    assert resolve_knob(down, 1.8e-3, 3e-4) == pytest.approx(3e-4)


def test_the_same_fault_again_climbs_instead_of_restarting():
    rem = Remediator(drift_first=False)
    assert rem.plan(diagnosis("sampling_temperature"), ALL, {"temperature": 2.2}, {"temperature": 1.0}).rung_index == 0
    again = rem.plan(diagnosis("sampling_temperature"), ALL, {"temperature": 1.0}, {"temperature": 1.0})
    assert again.rung_index == 1 and again.actions[-1].value == 0.8


def test_a_knob_change_since_the_healthy_checkpoint_is_undone_first_whatever_the_diagnosis():
    rem = Remediator()
    current, healthy = {"learning_rate": 9e-3, "beta": 0.04}, {"learning_rate": 3e-4, "beta": 0.04}
    first = rem.plan(diagnosis("advantage_sign"), ALL, current, healthy)  # a wrong diagnosis would halt
    assert first.fault_type == "knob_drift"
    assert [(a.kind, a.knob) for a in first.actions] == [("rollback", None), ("set_knob", "learning_rate")]
    assert first.actions[1].value == pytest.approx(3e-4)
    # the anomaly persists: now the diagnosed type's ladder, from its first rung
    second = rem.plan(diagnosis("advantage_sign"), ALL, {"learning_rate": 3e-4, "beta": 0.04}, healthy, escalate=True)
    assert second.fault_type == "advantage_sign" and second.rung.halt
    # the generic baseline never looks at drift: it halves (bounded at 10x the healthy LR)
    assert Remediator(generic=True).plan(diagnosis(None), ALL, current, healthy).actions[1].value == pytest.approx(3e-3)


def test_no_blind_intervention_by_default_but_a_diagnosed_fault_gets_its_ladder():
    rem = Remediator()
    knobs = {"learning_rate": 1e-3}
    assert rem.blind_budget_used(diagnosis(None)) and rem.plan(diagnosis(None), ALL, knobs, knobs) is None
    assert rem.plan(diagnosis("lr_high"), ALL, knobs, knobs).fault_type == "lr_high"


def test_one_blind_intervention_per_run_then_a_diagnosed_fault_still_gets_its_ladder():
    rem = Remediator(blind_interventions=1)
    knobs = {"learning_rate": 1e-3}
    assert rem.plan(diagnosis(None), ALL, knobs, knobs).fault_type is None
    assert rem.blind_budget_used(diagnosis(None)) and rem.plan(diagnosis(None), ALL, knobs, knobs) is None
    assert not rem.blind_budget_used(diagnosis("lr_high"))
    assert rem.plan(diagnosis("lr_high"), ALL, knobs, knobs).fault_type == "lr_high"


def test_new_knob_rungs_resolve_to_concrete_values():
    # tool_failure without a registered backup tool: retries, then more retries
    rem = Remediator()
    knobs = {"tool_retries": 0, "learning_rate": 1e-3}
    first = rem.plan(diagnosis("tool_failure"), ALL, knobs, knobs)
    assert [(a.kind, a.knob, a.value) for a in first.actions] == [
        ("rollback", None, None),
        ("set_knob", "tool_retries", 3),
    ]
    second = rem.plan(diagnosis("tool_failure"), ALL, {**knobs, "tool_retries": 3}, {**knobs, "tool_retries": 3})
    assert second.actions[-1].value == 9
    noisy = Remediator().plan(diagnosis("reward_noise"), ALL, {"reward_samples": 1}, {"reward_samples": 1})
    assert noisy.actions[-1].knob == "reward_samples" and noisy.actions[-1].value == 8
    rem = Remediator()
    zero = rem.plan(diagnosis("zero_variance"), ALL, {"dynamic_sampling_rounds": 0}, {"dynamic_sampling_rounds": 0})
    assert {(a.knob, a.value) for a in zero.actions if a.knob} == {("dynamic_sampling_rounds", 16)}
    more = rem.plan(
        diagnosis("zero_variance"), ALL, {"dynamic_sampling_rounds": 16}, {"dynamic_sampling_rounds": 0}, escalate=True
    )
    assert more.actions[-1].knob == "dynamic_sampling_rounds" and more.actions[-1].value == 32


def test_raising_a_knob_stops_at_its_ceiling_and_lowering_is_untouched():
    ceilings = {"learning_rate": 3e-4}
    low = Remediator().plan(
        diagnosis("lr_low"), ALL, {"learning_rate": 1e-4}, {"learning_rate": 1e-4}, ceilings=ceilings
    )
    assert low.actions[-1].value == pytest.approx(3e-4)  # x30 asked, the configured LR is the most it gets
    already = Remediator().plan(
        diagnosis("lr_low"), ALL, {"learning_rate": 5e-4}, {"learning_rate": 5e-4}, ceilings=ceilings
    )
    # above the ceiling already: never lowered by a "raise" (the change would leave it as it is: no action)
    assert already.unchanged == ["learning_rate"] and all(a.kind != "set_knob" for a in already.actions)
    high = Remediator().plan(
        diagnosis("lr_high"), ALL, {"learning_rate": 9e-3}, {"learning_rate": 9e-3}, ceilings=ceilings
    )
    assert high.actions[-1].value == pytest.approx(9e-4)


def test_escalation_keeps_the_type_being_repaired_unless_the_new_diagnosis_is_confident():
    knobs = {"reward_samples": 1, "learning_rate": 1e-3}
    for p, expected in ((0.49, "reward_noise"), (0.95, "tool_corruption")):
        rem = Remediator()
        first = rem.plan(diagnosis("reward_noise"), ALL, knobs, knobs)
        assert first.fault_type == "reward_noise"
        again = rem.plan(diagnosis("tool_corruption", p), ALL, {**knobs, "reward_samples": 8}, knobs, escalate=True)
        assert again.fault_type == expected
        if expected == "reward_noise":
            assert again.rung_index == 1 and again.actions[-1].value == 16  # the next rung of its own ladder
        else:
            assert again.rung.halt  # a confident code-fault diagnosis: halt


def test_after_an_undone_knob_change_fails_the_diagnosed_type_stays_the_one_being_repaired():
    # a fp16 blow-up with the LR pushed: the push is undone first; the anomaly persists and the diagnoser,
    # reading the repair's aftermath, is unsure of something else -- the blow-up's own ladder comes next
    current, healthy = {"learning_rate": 6e-4, "temperature": 1.0}, {"learning_rate": 2e-5, "temperature": 1.0}
    named = diagnosis("numerical_blowup", 0.97)
    for later in (diagnosis("sampling_temperature", 0.6), diagnosis(None)):
        rem = Remediator()
        assert rem.plan(named, ALL, current, healthy).fault_type == "knob_drift"
        assert rem.diagnosis_behind("numerical_blowup") is named
        again = rem.plan(later, ALL, healthy, healthy, escalate=True)
        assert again.fault_type == "numerical_blowup" and again.rung_index == 0 and again.rung.halt
        assert rem.diagnosis_behind("numerical_blowup") is named  # the halt rests on the diagnosis that named it
        rem.withdraw()
        assert rem.diagnosis_behind("numerical_blowup") is named and rem.interventions == 1
    # a confident new diagnosis still replaces it
    rem = Remediator()
    rem.plan(named, ALL, current, healthy)
    sure = rem.plan(diagnosis("sampling_temperature", 0.9), ALL, healthy, healthy, escalate=True)
    assert sure.fault_type == "sampling_temperature" and rem.diagnosis_behind("numerical_blowup") is None


def test_a_knob_change_to_the_value_the_knob_has_is_set_aside_not_planned():
    rem = Remediator()
    knobs = {"temperature": 1.0, "learning_rate": 1e-3}
    plan = rem.plan(diagnosis("sampling_temperature"), ALL, knobs, knobs)  # restore finds 1.0 already set
    assert plan.unchanged == ["temperature"] and [a.kind for a in plan.actions] == ["rollback"]


def test_a_withdrawn_plan_leaves_no_trace():
    rem = Remediator()
    knobs = {"learning_rate": 1e-3}
    first = rem.plan(diagnosis("lr_high"), ALL, knobs, knobs)
    rem.withdraw()
    again = rem.plan(diagnosis("lr_high"), ALL, knobs, knobs)  # the same rung again, not the next one
    assert again.rung_index == first.rung_index == 0 and rem.interventions == 1


def test_the_playbook_table_in_the_docs_is_the_playbook():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "playbook_table.py"
    spec = importlib.util.spec_from_file_location("playbook_table", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.DEFAULT.read_text(encoding="utf-8") == module.table(), "run python scripts/playbook_table.py"


def test_the_off_policy_rung_masks_what_a_stale_rollout_engine_leaves_and_nothing_on_policy():
    """TRL's own mask at the first ``rollout_mismatch`` rung's threshold: a negative-advantage sequence at the KL a
    rollout engine that missed weight syncs leaves (0.09, within the 90th percentiles of docs/results/opsm-masking.md)
    is dropped, where TRL's example threshold (0.5) kept it; an on-policy one (KL 0) and a positive one are kept."""
    import torch
    from trl import GRPOTrainer

    (change,) = PLAYBOOK["rollout_mismatch"][0].knobs
    assert change.knob == "off_policy_mask_threshold"
    trained = torch.zeros(3, 4)
    sampled = torch.tensor([[0.09] * 4, [0.0] * 4, [0.09] * 4])  # log-probs of the policy that sampled them
    advantages = torch.tensor([[-1.0], [-1.0], [1.0]])
    mask = torch.ones(3, 4)
    keep = GRPOTrainer.get_off_policy_mask(advantages, trained, sampled, mask, change.value)
    assert keep.view(-1).tolist() == [0.0, 1.0, 1.0]
    assert GRPOTrainer.get_off_policy_mask(advantages, trained, sampled, mask, 0.5).view(-1).tolist() == [1.0] * 3
