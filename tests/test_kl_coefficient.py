"""The KL-coefficient rule: a loss that is its KL penalty keeps loss / KL at the coefficient in use; a coefficient
that drops out of the loss (or is pushed far up) mid-run alarms with the loss per unit of KL as evidence, offline as
streamed; a policy term that scatters the ratio, a KL that is still 0, or a loss that is a policy term alone does
not."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from detector_fixtures import fit_synthetic, replayed_score, streamed_alarms

from rftfm.fm import kl_coefficient
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.detect import Detector, describe
from rftfm.report.console import evidence_text

STEPS = 30
BETA = 0.04


def _units(losses: list[float], kls: list[float]) -> list[float]:
    state = kl_coefficient.CoefficientState()
    return [state.advance(loss, kl)[0] for loss, kl in zip(losses, kls)]


def _kl(steps: int, seed: int) -> np.ndarray:
    """A KL that grows as the policy leaves its reference, with the k3 estimator's record-to-record scatter."""
    rng = np.random.default_rng(seed)
    return 0.002 * np.exp(2.3 * np.arange(1, steps + 1) / steps) * np.exp(rng.normal(0, 0.3, steps))


def test_units_count_the_coefficients_log_change_once_the_run_has_a_reference():
    kls = _kl(20, 0)
    factor = np.where(np.arange(1, 21) >= 14, 0.01, 1.0)  # from step 14 the loss sees beta x 0.01
    units = _units(list(BETA * factor * kls), list(kls))
    first = kl_coefficient.WINDOW + kl_coefficient.MIN_BASELINE
    assert all(math.isnan(u) for u in units[: first - 1]) and units[first - 1] == pytest.approx(0.0, abs=1e-9)
    assert not any(abs(u) >= 1.0 for u in units[:15])  # the window still holds a record from before
    assert units[15] == pytest.approx(math.log(0.01) / kl_coefficient.LIMIT)  # 3 records since: e-fold units
    state = kl_coefficient.CoefficientState()
    for loss, kl in zip(BETA * factor * kls, kls):
        values = state.advance(loss, kl)
    assert values[1] == pytest.approx(0.01 * BETA) and values[2] == pytest.approx(BETA)  # now, before
    # a push the other way (beta 0.04 -> 1) counts upwards
    pushed = _units(list(BETA * np.where(np.arange(1, 21) >= 14, 25.0, 1.0) * kls), list(kls))
    assert pushed[-1] == pytest.approx(math.log(25.0))


def test_a_record_without_a_ratio_leaves_the_state_and_a_scattered_window_or_reference_is_not_judged():
    kls = list(_kl(20, 1))
    losses = [BETA * k for k in kls]
    base = _units(losses, kls)
    # KL of 0 (the first step), a non-positive or missing loss: not judged, the state as it was
    gapped = _units([0.0, *losses[:10], -0.01, math.nan, *losses[10:]], [0.0, *kls[:10], 0.01, 0.01, *kls[10:]])
    assert math.isnan(gapped[0]) and math.isnan(gapped[11]) and math.isnan(gapped[12])
    assert gapped[-1] == pytest.approx(base[-1])
    # a record that clips (importance ratios other than 1: its policy term is not 0) leaves the state as it was too
    state = kl_coefficient.CoefficientState()
    clipped = [state.advance(loss, kl, 0.02 if i == 12 else 0.0)[0] for i, (loss, kl) in enumerate(zip(losses, kls))]
    without = _units(losses[:12] + losses[13:], kls[:12] + kls[13:])
    assert math.isnan(clipped[12]) and clipped[-1] == pytest.approx(without[-1])
    # a policy term that takes over the loss for a few records scatters the window: 0, whatever its level
    scattered = _units(losses[:12] + [50 * BETA * kls[12], 5 * BETA * kls[13], 20 * BETA * kls[14]], kls[:15])
    assert scattered[-1] == 0.0
    # a reference without one coefficient (a loss that is a policy term: verl's pg_loss) is never judged
    rng = np.random.default_rng(2)
    policy = list(np.abs(rng.normal(0, 0.003, 20)) + 1e-4)
    rising = list(np.geomspace(0.5, 17.0, 20))  # a KL rising 34-fold under it
    assert all(u == 0.0 or math.isnan(u) for u in _units(policy, rising))


def test_cube_units_equal_the_streaming_ones_and_the_reading_is_the_largest_of_the_last_window():
    raw = np.full((2, 20, len(CUBE_SIGNALS)), np.nan)
    kls = np.vstack([_kl(20, 3), _kl(20, 4)])
    raw[:, :, kl_coefficient.KL] = kls
    raw[:, :, kl_coefficient.LOSS] = BETA * kls * np.where(np.arange(1, 21) >= 15, 0.05, 1.0)
    steps = np.tile(np.arange(1, 21), (2, 1))
    steps[0, 6] = 0  # a record the run did not log
    out = kl_coefficient.cube_units(np.where(steps[..., None] > 0, raw, np.nan), steps)
    present = steps[0] > 0
    losses = [v if p else math.nan for v, p in zip(raw[0, :, kl_coefficient.LOSS], present)]
    np.testing.assert_allclose(out[0], _units(losses, list(kls[0])))
    reading, evidence = kl_coefficient.reading(raw[1], steps[1])
    last = out[1][-kl_coefficient.BASELINE :]
    assert reading == pytest.approx(last[np.nanargmax(np.abs(last))]) and reading < -1.0
    assert evidence is not None and evidence.z == reading and evidence.direction == "down"
    assert math.isnan(kl_coefficient.reading(raw[1, :5], steps[1, :5])[0])  # no reference yet


def _rows(run_id: str, seed: int, onset: int | None) -> list[dict]:
    """A GRPO run with a sequence-level loss, whose loss is its KL penalty (beta x KL up to a 3 % scatter of the
    token-averaged KL); from ``onset`` the loss sees the KL coefficient x 0.01 while the KL goes on rising."""
    rng = np.random.default_rng(seed)
    kls = _kl(STEPS, seed + 100)
    rows = []
    for s in range(1, STEPS + 1):
        coefficient = BETA * (0.01 if onset is not None and s >= onset else 1.0)
        rows.append({
            "run_id": run_id, "step": s,
            "reward_mean": float(np.clip(0.4 + 0.005 * s + rng.normal(0, 0.04), 0, 1)),
            "reward_std": 0.4 + rng.normal(0, 0.02),
            "kl": float(kls[s - 1]),
            "entropy": float(0.6 - 0.005 * s + rng.normal(0, 0.03)),
            "policy_loss": float(coefficient * kls[s - 1] * np.exp(rng.normal(0, 0.03))),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 10 * np.exp(rng.normal(0, 0.05)),
        })
    return rows


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_synthetic(lambda run_id, i, onset: _rows(run_id, i, onset), "kl_dropped", 14)


def test_a_coefficient_dropped_mid_run_alarms_with_the_loss_per_unit_of_kl_as_evidence(fitted):
    alarms = streamed_alarms(fitted, _rows("dropped", 99, onset=16))
    # (the small synthetic fit's learned channel alarms too, before the onset as well: only the rule is tested here)
    by_rule = [a for a in alarms if any(e.per_kl for e in a.evidence)]
    assert by_rule and by_rule[0].step == 16 + kl_coefficient.WINDOW - 1  # the first window wholly after the onset
    assert all(a.score > 1.0 for a in by_rule)
    per_kl = [e for e in by_rule[0].evidence if e.per_kl]
    assert per_kl and per_kl[0].signal == "policy_loss" and per_kl[0].direction == "down"
    assert per_kl[0].value == pytest.approx(0.01 * BETA, rel=0.1) and per_kl[0].expected == pytest.approx(BETA, rel=0.1)
    assert "fell 1e+02-fold" in describe(per_kl[0]) and "per unit of KL ↓" in evidence_text(per_kl[0])


def test_healthy_runs_never_reach_a_unit_and_a_rollback_restores_the_ratios(fitted):
    for seed in range(90, 96):
        cube, steps = runs_cube(pl.DataFrame(_rows("healthy", seed, onset=None)), ["healthy"])
        units = kl_coefficient.cube_units(cube, steps)[0]
        assert np.isfinite(units).sum() > 15 and not (np.abs(units[np.isfinite(units)]) > 1.0).any()
    first, again = replayed_score(fitted, _rows("rb", 97, onset=16), upto=20, back_to=15)
    assert first > 1.0 and again == pytest.approx(first)


def test_against_the_configured_coefficient_a_loss_carrying_less_alarms_from_the_first_window():
    conf = kl_coefficient.Configured.of(BETA, "bnpo")
    assert conf == kl_coefficient.Configured(BETA) and conf.expected(7.0) == BETA
    assert kl_coefficient.Configured.of(0.0, "grpo") is None and kl_coefficient.Configured.of(None) is None
    dr = kl_coefficient.Configured.of(BETA, "dr_grpo", 20)  # the KL term summed over tokens / (batch x 20)
    assert dr.expected(5.0) == pytest.approx(BETA / 4) and dr.expected(math.nan) is None
    assert kl_coefficient.Configured.of(BETA, "dr_grpo", None) is None

    class Trainer:  # what a TRL GRPOTrainer exposes
        beta, loss_type, max_completion_length = BETA, "dr_grpo", 20

    assert kl_coefficient.Configured.of_trainer(Trainer()) == dr
    kls = _kl(12, 5)
    rng = np.random.default_rng(6)
    for factor, below in ((0.01, True), (0.2, True), (1.0, False), (3.0, False)):
        state = kl_coefficient.CoefficientState(configured=conf)
        out = [state.advance(factor * BETA * k * np.exp(rng.normal(0, 0.05)), k) for k in kls]
        assert all(math.isnan(v[0]) for v in out[: kl_coefficient.WINDOW - 1])  # a window to fill first
        judged = [v for v in out[kl_coefficient.WINDOW - 1 :]]
        if below:  # from the first window: units of e-folds below, the configured coefficient as "before"
            assert all(v[0] == pytest.approx(math.log(factor), abs=0.1) and v[3] for v in judged)
            assert judged[0][2] == BETA and judged[0][1] == pytest.approx(factor * BETA, rel=0.1)
        else:  # at or above it (a policy term adds to the loss): nothing either way
            assert all(abs(v[0]) < 1.0 for v in judged)
    # a window that scatters (a policy term comparable to the penalty) is not judged against it
    state = kl_coefficient.CoefficientState(configured=conf)
    scattered = [state.advance(f * BETA * k, k)[0] for f, k in zip([0.01, 0.3, 0.02, 0.5, 0.01], kls)]
    assert all(math.isnan(u) for u in scattered)
    # positive records between negative ones (a policy term outweighing the penalty at most records, a healthy
    # token-level loss) are no window: only an unbroken run of records reads the coefficient
    losses = [0.2 * BETA * k if i % 2 else -0.5 * BETA * k for i, k in enumerate(kls)]
    state = kl_coefficient.CoefficientState(configured=conf)
    assert all(math.isnan(state.advance(loss, k)[0]) for loss, k in zip(losses, kls))
    state = kl_coefficient.CoefficientState(configured=conf)
    unbroken = [state.advance(0.2 * BETA * k, k)[0] for k in kls[: kl_coefficient.WINDOW]]
    assert unbroken[-1] == pytest.approx(math.log(0.2))
    e = kl_coefficient.evidence(-4.6, 0.01 * BETA, BETA, True, 3)
    assert "vs 0.04 configured" in describe(e) and "1e+02-fold less KL penalty than the trainer" in describe(e)


def test_a_trainer_that_keeps_its_configured_coefficient_out_of_the_loss_is_caught_live_and_diagnosed():
    from rftfm.fm.diagnose import Diagnoser
    from rftfm.fm.features import features_frame

    detector = Detector.load_default()
    detector.know_kl_coefficient(kl_coefficient.Configured(BETA))
    try:
        alarms = streamed_configured(detector, _rows("dropped", 98, onset=1))
        assert alarms and alarms[0].step == kl_coefficient.WINDOW
        per_kl = [e for e in alarms[0].evidence if e.per_kl]
        assert per_kl and per_kl[0].configured and per_kl[0].expected == BETA
        for seed in range(90, 94):  # healthy runs of the same trainer: no record reaches a unit
            assert not any(e.per_kl for a in streamed_configured(detector, _rows("h", seed, None)) for e in a.evidence)
    finally:
        detector.know_kl_coefficient(None)
    diagnoser = Diagnoser.load_default()
    history = features_frame(pl.DataFrame(_rows("dropped", 98, onset=1)[:6]), None)
    diagnoser.know_kl_coefficient(kl_coefficient.Configured(BETA))
    told = diagnoser.diagnose(history, "dropped", 6)
    assert not told.unknown and told.ranked[0].fault_type == "kl_dropped"
    assert told.ranked[0].probability == pytest.approx(1.0)
    diagnoser.know_kl_coefficient(None)
    assert diagnoser.diagnose(history, "dropped", 6).ranked[0].probability < 1.0  # from the log alone: not seen


def streamed_configured(detector: Detector, rows: list[dict]) -> list:
    """The alarms of one run observed live, each record's live score checked against the offline one with the same
    configured coefficient (as the evaluation's in-trainer method scores it)."""
    from detector_fixtures import stream

    cube, steps = runs_cube(pl.DataFrame(rows), [rows[0]["run_id"]])
    offline, _ = detector.score_cube(cube, steps, "a")
    units = np.abs(kl_coefficient.cube_units(cube, steps, [detector.kl_configured]))
    scores, alarms = stream(detector, rows)
    np.testing.assert_allclose(scores, np.fmax(offline, units)[0], rtol=1e-9)
    return alarms


def test_the_loop_follows_the_coefficient_its_trainers_knobs_say_so_its_own_beta_change_is_no_evidence():
    from rftfm.fm.incidents import MemoryIncidentStore
    from rftfm.fm.ledger import Journal
    from rftfm.fm.sensing import Sensing
    from rftfm.records import StepRecord

    journal = Journal(MemoryIncidentStore(), "own", 100)
    sensing = Sensing(Detector.load_default(), None, journal, lambda stage, fn: (True, fn()), task_group=None,
                      model_size=None, max_history=100)
    sensing.reset_detector()
    sensing.follow_kl_coefficient(None)  # no trainer bound: nothing told
    assert sensing.detector.kl_configured is None
    sensing.know_kl_coefficient(kl_coefficient.Configured(BETA))  # what the callback read off the trainer ...
    sensing.follow_kl_coefficient({"learning_rate": 1e-5})  # ... stands where the knobs carry no beta (PEFT's TRL)
    assert sensing.detector.kl_configured == kl_coefficient.Configured(BETA)
    kls = _kl(16, 7)
    per_kl = []
    for step, kl in enumerate(kls, start=1):
        beta = BETA if step < 9 else BETA / 10  # the loop itself cut beta 10-fold at step 9 (a kl_misconfig rung)
        sensing.follow_kl_coefficient({"beta": beta, "loss_type": "bnpo", "max_completion_length": 16})
        record = StepRecord(run_id="own", step=step, reward_mean=0.5, reward_std=0.3, kl=float(kl), entropy=1.0,
                            policy_loss=float(beta * kl), completion_length_mean=8.0)
        ok, alarm = sensing.detect(record, [], 0)
        per_kl += [e for e in (alarm.evidence if alarm else []) if e.per_kl and e.configured]
    assert sensing.detector.kl_configured == kl_coefficient.Configured(BETA / 10) and not per_kl
    state = kl_coefficient.CoefficientState(configured=kl_coefficient.Configured(BETA))
    for kl in kls[:3]:
        state.advance(0.01 * BETA * kl, kl)
    state.know(kl_coefficient.Configured(BETA / 100))  # a changed coefficient starts a new window
    assert not state.below and math.isnan(state.advance(0.01 * BETA * kls[3], kls[3])[0])
