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
