"""The level-shift channel: a step metric that moves to a new level and holds alarms; drift and spikes do not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from detector_fixtures import fit_synthetic, replayed_score, stream, streamed_alarms

from rftfm.fm import level_shift
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.detect import Detector

STEPS = 40
K = level_shift.SIGNALS.index


def _stats(series: dict[str, list[float]]) -> np.ndarray:
    """(records, len(SIGNALS)) statistics of the given signals' series (the others absent)."""
    n = len(next(iter(series.values())))
    state, out = level_shift.LevelState(), []
    for i in range(n):
        raw = np.full(len(level_shift.SIGNALS), np.nan)
        for name, values in series.items():
            raw[K(name)] = values[i]
        out.append(state.advance(raw)[0].copy())
    return np.array(out)


def test_the_statistic_is_the_windows_mean_against_the_references_in_units_of_its_sd():
    rng = np.random.default_rng(0)
    reward = list(0.3 + rng.normal(0, 0.05, 20)) + [0.8] * 4
    stats = _stats({"reward_mean": reward})[:, K("reward_mean")]
    first = level_shift.WINDOW + level_shift.MIN_BASELINE
    assert np.isnan(stats[: first - 1]).all() and np.isfinite(stats[first - 1 :]).all()
    reference = np.array(reward[:20])
    assert stats[-1] == pytest.approx((0.8 - reference.mean()) / reference.std())
    assert stats[-1] > 8  # ten of the reference's sds up
    young = _stats({"reward_mean": reward[:9] + [0.8] * 4})[-1, K("reward_mean")]  # a reference of 9: the same
    assert young == pytest.approx((0.8 - np.mean(reward[:9])) / np.std(reward[:9]))


def test_magnitudes_compare_as_logs_with_a_floor_and_a_signed_level_never_below_its_own_quantum():
    grad = [1.0] * 16 + [1.02] * 4  # a flat magnitude moving 2 %: under the 5 % floor
    assert abs(_stats({"grad_norm": grad})[-1, K("grad_norm")]) < 1
    reward = [0.25] * 12 + [0.28125] * 4  # a flat mean of 32 rewards, one completion (1/32) up
    assert _stats({"reward_mean": reward})[-1, K("reward_mean")] == pytest.approx(1.0)
    scaled = [10 * g for g in [1.0, 1.1, 0.9] * 6 + [3.0] * 4]  # the unit does not matter for a magnitude
    np.testing.assert_allclose(
        _stats({"grad_norm": scaled})[:, K("grad_norm")],
        _stats({"grad_norm": [g / 10 for g in scaled]})[:, K("grad_norm")],
    )


def test_a_record_without_a_signal_leaves_its_state_and_the_cube_equals_the_stream():
    rng = np.random.default_rng(1)
    raw = np.full((2, 30, len(CUBE_SIGNALS)), np.nan)
    raw[..., CUBE_SIGNALS.index("entropy")] = np.exp(rng.normal(0, 0.1, (2, 30)))
    raw[0, :, CUBE_SIGNALS.index("reward_mean")] = rng.random(30)
    steps = np.tile(np.arange(1, 31), (2, 1))
    steps[0, 7] = 0  # a record the run did not log
    out = level_shift.cube_stats(np.where(steps[..., None] > 0, raw, np.nan), steps)
    logged = steps[0] > 0
    stream = _stats({s: [v if p else math.nan for v, p in zip(raw[0, :, CUBE_SIGNALS.index(s)], logged)]
                     for s in ("entropy", "reward_mean")})
    np.testing.assert_allclose(out[0, logged], stream[logged])
    assert np.isnan(out[1, :, K("reward_mean")]).all()  # never logged: never judged


def _rows(run_id: str, seed: int, onset: int | None) -> list[dict]:
    """A run whose KL grows, entropy declines and reward climbs (healthy dynamics), with a k3 KL spike at step 20;
    from ``onset`` a noisy verifier: the reward sd steps from 0.4 to 1.1."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, STEPS + 1):
        noisy = onset is not None and s >= onset
        rows.append({
            "run_id": run_id, "step": s,
            "reward_mean": float(0.2 + 0.01 * s + rng.normal(0, 0.04)),
            "reward_std": float((1.1 if noisy else 0.4) * np.exp(rng.normal(0, 0.08))),
            "kl": float(0.002 * s * np.exp(rng.normal(0, 0.2)) * (8.0 if s == 20 else 1.0)),
            "entropy": float(1.0 - 0.01 * s + rng.normal(0, 0.02)),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": float(10 * np.exp(0.01 * s + rng.normal(0, 0.05))),
            "frac_zero_std_groups": float(np.clip(0.3 + rng.normal(0, 0.08), 0, 1)),
        })
    return rows


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_synthetic(_rows, "reward_noise", 16)


def test_calibrated_limits_sit_above_healthy_moves_and_the_saved_artifact_keeps_them(fitted):
    limits = fitted.level_limits
    assert math.isfinite(fitted.thresholds["a"]["level_shift"])
    assert np.isfinite(limits[K("reward_std")]).all() and (limits[K("reward_std")] > 0).all()
    assert np.isinf(limits[K("tool_call_frequency")]).all()  # no run logs it: never judged
    data = json.loads(json.dumps(fitted.to_dict()))
    assert data["level_limits"]["tool_call_frequency"] == [None, None]
    np.testing.assert_array_equal(Detector.from_dict(data).level_limits, limits)
    del data["level_limits"]["kl"]
    with pytest.raises(ValueError, match="level-shift"):
        Detector.from_dict(data)


def test_a_reward_sd_that_steps_up_and_holds_alarms_with_it_as_evidence_offline_asstream(fitted):
    alarms = streamed_alarms(fitted, _rows("noisy", 99, onset=25))
    assert alarms and 25 <= alarms[0].step < 25 + level_shift.WINDOW
    (first,) = [e for e in alarms[0].evidence if e.signal == "reward_std"][:1]
    # (at the confirmed record, the second after the onset, the channel's own evidence: the window's mean, which
    # still holds records from before the onset, against the reference)
    assert first.direction == "up" and first.value > 1.5 * first.expected and first.since_step <= alarms[0].step


def test_healthy_drift_and_a_kl_spike_are_no_shift_and_a_rollback_restores_the_windows(fitted):
    for seed in (90, 91, 92):
        assert not stream(fitted, _rows("healthy", seed, onset=None))[1]
    first, again = replayed_score(fitted, _rows("rb", 93, onset=None), upto=30, back_to=18)
    assert again == pytest.approx(first)
