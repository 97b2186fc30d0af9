"""The loss-scale channel: advantages whose sign flipped on some trajectories mid-run lift the loss's magnitude and
alarm with the loss as evidence; a loss of exactly 0 for a while, or a healthy loss's slow drift, does not."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from detector_fixtures import fit_synthetic, replayed_score, streamed_alarms

from rftfm.fm import loss_scale
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.detect import Detector

STEPS = 30


def _stats(losses: list[float]) -> list[float]:
    state = loss_scale.ScaleState()
    return [state.advance(loss)[0] for loss in losses]


def test_the_statistic_is_the_log_of_the_windows_median_magnitude_over_the_largest_before():
    losses = [0.02, -0.02, 0.01, -0.01] * 3 + [0.3, -0.2, 0.25, -0.1]
    stats = _stats(losses)
    first = loss_scale.WINDOW + loss_scale.MIN_BASELINE
    assert all(math.isnan(s) for s in stats[: first - 1]) and np.isfinite(stats[first - 1])
    assert stats[-1] == pytest.approx(math.log(0.225 / 0.02))  # median of |0.3|, |0.2|, |0.25|, |0.1| over the largest
    # a reference of exact zeros (every group's rewards equal) is taken at the floor, a window of zeros stays finite
    zeros = _stats([0.0] * 12 + [0.05, -0.05, 0.05, -0.05])
    assert zeros[-1] == pytest.approx(math.log(0.05 / loss_scale.FLOOR))
    assert -30.0 < _stats([0.01] * 12 + [0.0] * 4)[-1] < 0.0
    # a record without a finite loss, or whose groups all had equal rewards, leaves the state as it was
    state = loss_scale.ScaleState()
    records = zip([*losses[:12], math.nan, 0.4, *losses[12:]], [0.5] * 13 + [1.0] + [0.5] * 4)
    gapped = [state.advance(loss, zero_std)[0] for loss, zero_std in records]
    assert math.isnan(gapped[12]) and math.isnan(gapped[13]) and gapped[-1] == pytest.approx(stats[-1])
    # from a record that clips on (an optimiser taking several steps on one batch), nothing is judged
    state = loss_scale.ScaleState()
    clipping = [state.advance(loss, 0.0, 0.02 if i == 3 else 0.0)[0] for i, loss in enumerate(losses)]
    assert all(math.isnan(s) for s in clipping) and state.copy().clipped


def test_cube_stats_equal_the_streaming_ones():
    rng = np.random.default_rng(0)
    raw = np.full((2, 20, len(CUBE_SIGNALS)), np.nan)
    raw[:, :, loss_scale.LOSS] = rng.normal(0, 0.01, (2, 20))
    steps = np.tile(np.arange(1, 21), (2, 1))
    steps[0, 6] = 0  # a record the run did not log
    out = loss_scale.cube_stats(np.where(steps[..., None] > 0, raw, np.nan), steps)
    present = steps[0] > 0
    losses = [v if p else math.nan for v, p in zip(raw[0, :, loss_scale.LOSS], present)]
    np.testing.assert_allclose(out[0], _stats(losses))


def test_the_reading_is_the_largest_statistic_of_the_last_window_with_the_loss_as_evidence():
    losses = [0.02, -0.02, 0.01, -0.01] * 3 + [0.3, -0.2, 0.25, -0.4]  # the last record's statistic is the largest
    raw = np.full((len(losses), len(CUBE_SIGNALS)), np.nan)
    raw[:, loss_scale.LOSS] = losses
    steps = np.arange(1, len(losses) + 1)
    stat, evidence = loss_scale.reading(raw, steps)
    assert stat == pytest.approx(np.nanmax(_stats(losses)[-loss_scale.WINDOW :]))
    assert evidence is not None and evidence.signal == "policy_loss" and evidence.direction == "up"
    assert evidence.value > evidence.expected and evidence.since_step == len(losses) - loss_scale.WINDOW + 1
    young = loss_scale.reading(raw[:6], steps[:6])  # no reference yet: nothing judged, no evidence
    assert math.isnan(young[0]) and young[1] is None


def _rows(run_id: str, seed: int, onset: int | None) -> list[dict]:
    """A GRPO run whose loss is a token-level length covariance (noise of 0.005 around 0, drifting slowly); from
    ``onset`` the advantages of some trajectories flip sign, so they no longer sum to 0: the loss's magnitude jumps
    to about 0.1 either way."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, STEPS + 1):
        broken = onset is not None and s >= onset
        flipped = rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.15) if broken else 0.0
        policy = rng.normal(0.001 * s / STEPS, 0.005) + flipped
        rows.append({
            "run_id": run_id, "step": s,
            "reward_mean": float(np.clip(0.4 + 0.005 * s + rng.normal(0, 0.04), 0, 1)),
            "reward_std": 0.4 + rng.normal(0, 0.02),
            "kl": float(0.002 * np.exp(2.3 * s / STEPS) * np.exp(rng.normal(0, 0.2))),
            "entropy": float(0.6 - 0.005 * s + rng.normal(0, 0.03)),
            "policy_loss": float(policy),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 10 * np.exp(rng.normal(0, 0.05)),
        })
    return rows


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_synthetic(lambda run_id, i, onset: _rows(run_id, i, onset), "advantage_sign", 14)


def test_a_broken_advantage_sum_mid_run_alarms_with_the_loss_as_evidence_offline_as_streamed(fitted):
    threshold = fitted.thresholds["a"]["loss_scale"]
    assert loss_scale.MIN_THRESHOLD <= threshold < 3.0  # calibrated on the normal runs, below the flip's jump
    alarms = streamed_alarms(fitted, _rows("flipped", 99, onset=16))
    assert alarms and 16 <= alarms[0].step < 16 + loss_scale.WINDOW
    loss = [e for e in alarms[0].evidence if e.signal == "policy_loss"]
    assert loss and loss[0].direction == "up" and loss[0].value > 0.05 > 0.02 > loss[0].expected  # the largest before


def test_a_healthy_loss_does_not_leave_its_scale_and_a_rollback_restores_the_window(fitted):
    threshold = fitted.thresholds["a"]["loss_scale"]
    cube, steps = runs_cube(pl.DataFrame(_rows("healthy", 98, onset=None)), ["healthy"])
    stats = loss_scale.cube_stats(cube, steps)[0]
    assert np.isfinite(stats).sum() > 10 and not (stats > threshold).any()
    # a run with the flip from step 16, rolled back to step 15 at step 19: the window and its reference as before
    first, again = replayed_score(fitted, _rows("rb", 97, onset=16), upto=19, back_to=15)
    assert first > 1.0 and again == pytest.approx(first)
