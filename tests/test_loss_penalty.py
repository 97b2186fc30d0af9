"""The loss-penalty channel: an entropy coefficient whose sign flipped mid-run alarms with the loss as evidence; a
loss that follows a growing KL, or that sits positive from the first record, does not."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from detector_fixtures import fit_synthetic, replayed_score, streamed_alarms

from rftfm.fm import loss_penalty
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.detect import Detector

STEPS = 30


def _stats(losses: list[float], entropies: list[float]) -> list[float]:
    state = loss_penalty.PenaltyState()
    return [state.advance(loss, entropy)[0] for loss, entropy in zip(losses, entropies)]


def test_the_statistic_is_the_windows_smallest_loss_per_nat_over_the_median_before_in_units_of_its_spread():
    entropies = [0.5] * 16
    losses = [0.0, 0.001, -0.001, 0.0, 0.002, -0.002, 0.0, 0.0] + [0.0] * 4 + [0.25, 0.2, 0.3, 0.25]
    stats = _stats(losses, entropies)
    first = loss_penalty.WINDOW + loss_penalty.MIN_BASELINE
    assert all(math.isnan(s) for s in stats[: first - 1]) and stats[first - 1] == pytest.approx(0.0)
    reference = np.array(losses[:12]) / 0.5
    expected = (0.2 / 0.5 - max(np.median(reference), 0.0)) / max(reference.std(), loss_penalty.FLOOR)
    assert stats[-1] == pytest.approx(expected)
    # a loss that climbs back towards 0 from below (successful completions the longer ones) is no penalty
    assert _stats([-0.1, -0.12, -0.08] * 4 + [-0.01] * 4, entropies)[-1] <= 0.0
    # a record without a finite loss or a positive entropy leaves the state as it was
    gapped = _stats(losses[:12] + [math.nan, 0.1] + losses[12:], entropies[:12] + [0.5, 0.0] + entropies[12:])
    assert math.isnan(gapped[12]) and math.isnan(gapped[13]) and gapped[-1] == pytest.approx(stats[-1])


def test_cube_stats_equal_the_streaming_ones():
    rng = np.random.default_rng(0)
    raw = np.full((2, 20, len(CUBE_SIGNALS)), np.nan)
    raw[:, :, loss_penalty.LOSS] = rng.normal(0, 0.01, (2, 20))
    raw[:, :, loss_penalty.ENTROPY] = rng.uniform(0.3, 1.0, (2, 20))
    steps = np.tile(np.arange(1, 21), (2, 1))
    steps[0, 6] = 0  # a record the run did not log
    out = loss_penalty.cube_stats(np.where(steps[..., None] > 0, raw, np.nan), steps)
    present = steps[0] > 0
    losses = [v if p else math.nan for v, p in zip(raw[0, :, loss_penalty.LOSS], present)]
    np.testing.assert_allclose(out[0], _stats(losses, list(raw[0, :, loss_penalty.ENTROPY])))


def _rows(run_id: str, seed: int, onset: int | None, penalty_from_start: bool = False) -> list[dict]:
    """A GRPO run whose loss is its policy term (noise around 0) plus beta x a KL that grows tenfold; from ``onset``
    the entropy coefficient is -0.5 (a penalty): the loss gains 0.5 x entropy."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, STEPS + 1):
        kl = 0.002 * np.exp(2.3 * s / STEPS) * np.exp(rng.normal(0, 0.2))
        entropy = 0.6 - 0.005 * s + rng.normal(0, 0.03)
        penalised = penalty_from_start or (onset is not None and s >= onset)
        rows.append({
            "run_id": run_id, "step": s,
            "reward_mean": float(np.clip(0.4 + 0.005 * s + rng.normal(0, 0.04), 0, 1)),
            "reward_std": 0.4 + rng.normal(0, 0.02),
            "kl": float(kl),
            "entropy": float(entropy),
            "policy_loss": float(rng.normal(0, 0.003) + 0.04 * kl + (0.5 * entropy if penalised else 0.0)),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 10 * np.exp(rng.normal(0, 0.05)),
        })
    return rows


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_synthetic(lambda run_id, i, onset: _rows(run_id, i, onset), "entropy_collapse", 14)


def test_an_entropy_penalty_switched_on_mid_run_alarms_with_the_loss_as_evidence_offline_as_streamed(fitted):
    threshold = fitted.thresholds["a"]["loss_penalty"]
    assert 0.0 < threshold < 20.0  # calibrated on the normal runs: above their loss's moves, below the penalty's
    rows = _rows("penalised", 99, onset=16)
    cube, steps = runs_cube(pl.DataFrame(rows), ["penalised"])
    alarms = streamed_alarms(fitted, rows)
    assert alarms and 16 <= alarms[0].step < 16 + loss_penalty.WINDOW
    # the loss-scale channel may name the loss first (from the window's first two records under the penalty); at the
    # first record whose penalty statistic is over its threshold, the evidence is the penalty's
    stats = loss_penalty.cube_stats(cube, steps)[0]
    crossed = int(steps[0][np.argmax(stats > threshold)])
    loss = [e for a in alarms if a.step == crossed for e in a.evidence if e.signal == "policy_loss"]
    assert loss and loss[0].direction == "up" and loss[0].value > 0.2 > 0.01 > abs(loss[0].expected)
    assert loss[0].z == pytest.approx(stats[crossed - 1])


def test_a_loss_following_a_growing_kl_or_positive_from_the_start_is_no_penalty_and_a_rollback_restores_it(fitted):
    threshold = fitted.thresholds["a"]["loss_penalty"]
    for rows in (_rows("healthy", 98, onset=None), _rows("from-start", 96, onset=None, penalty_from_start=True)):
        cube, steps = runs_cube(pl.DataFrame(rows), [rows[0]["run_id"]])
        stats = loss_penalty.cube_stats(cube, steps)[0]
        assert np.isfinite(stats).sum() > 10 and not (stats > threshold).any()
    # a run with the penalty from step 16, rolled back to step 15 at step 19: the window and its reference as before
    # (the penalty's statistic carries the score there: records taken in twice would move it)
    first, again = replayed_score(fitted, _rows("rb", 97, onset=16), upto=19, back_to=15)
    assert first > 5.0 and again == pytest.approx(first)


def test_the_penalty_term_is_the_one_whose_added_coefficient_stays_constant() -> None:
    """An entropy coefficient flipped to -3 adds 3 x entropy at every record while the entropy falls and the KL grows
    (the term is the entropy, coefficient 3); a KL coefficient pushed to 5 adds 5 x KL (the KL's); a loss whose rise
    follows neither, or a run without a reference yet, names none."""
    rng = np.random.default_rng(0)
    n = 24
    entropy = np.r_[np.full(n - 4, 0.8), [0.7, 0.55, 0.4, 0.3]]
    kl = np.r_[np.linspace(0.01, 0.02, n - 4), [0.05, 0.09, 0.15, 0.2]]
    policy = rng.normal(0.0, 0.002, n)
    steps = np.arange(1, n + 1)

    def cube(loss: np.ndarray) -> np.ndarray:
        raw = np.full((n, len(CUBE_SIGNALS)), np.nan)
        raw[:, loss_penalty.LOSS], raw[:, loss_penalty.ENTROPY], raw[:, loss_penalty.KL] = loss, entropy, kl
        return raw

    onset = np.arange(n) >= n - 4
    term, coefficient = loss_penalty.penalty_term(cube(policy + onset * 3.0 * entropy), steps)
    assert term == "entropy" and coefficient == pytest.approx(3.0, rel=0.01)
    term, coefficient = loss_penalty.penalty_term(cube(policy + onset * 5.0 * kl), steps)
    assert term == "kl" and coefficient == pytest.approx(5.0, rel=0.05)
    erratic = onset * np.r_[np.zeros(n - 4), [0.5, 0.1, 0.9, 0.3]]
    assert loss_penalty.penalty_term(cube(policy + erratic), steps)[0] is None
    young = loss_penalty.penalty_term(cube(policy + onset * 3.0 * entropy)[-8:], steps[-8:])  # no reference yet
    assert young[0] is None and math.isnan(young[1])


def test_a_named_penalty_is_evidence_in_words() -> None:
    """The diagnosis's evidence for a penalty names its term and the coefficient it added, in the run's own numbers."""
    from rftfm.fm.detect import describe
    from rftfm.report.console import evidence_text

    n = 16
    raw = np.full((n, len(CUBE_SIGNALS)), np.nan)
    entropy = np.r_[np.full(n - 4, 0.8), [0.7, 0.6, 0.5, 0.4]]
    raw[:, loss_penalty.ENTROPY], raw[:, loss_penalty.KL] = entropy, 0.01
    raw[:, loss_penalty.LOSS] = [0.0, 0.002] * 6 + list(3.0 * entropy[-4:])
    evidence = loss_penalty.term_evidence(raw, np.arange(1, n + 1))
    assert evidence is not None and evidence.penalty_term == "entropy"
    assert evidence.coefficient == pytest.approx(3.0, rel=0.01) and evidence.since_step == n - 3
    text = describe(evidence)
    assert "3 x entropy added at every record since" in text and "moved by -3" in text
    assert evidence_text(evidence) == f"policy_loss ↑ 1.65 (+3 x entropy) since step {n - 3}"
    raw[:, loss_penalty.LOSS] = 0.001  # no rise: nothing named
    assert loss_penalty.term_evidence(raw, np.arange(1, n + 1)) is None
