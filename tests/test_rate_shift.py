"""The rate-shift channel: a tool failure rate that steps up and holds alarms; one a healthy policy moves does not."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from detector_fixtures import fit_synthetic, replayed_score, stream, streamed_alarms

from rftfm.fm import rate_shift
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.detect import Detector

STEPS = 30


def _shifts(rates: list[float], weights: list[float] | None = None) -> list[float]:
    state = rate_shift.ShiftState()
    out = []
    for rate, weight in zip(rates, weights or [1.0] * len(rates)):
        now, before = state.advance(np.array([rate]), np.array([weight]))
        out.append(float(now[0] - before[0]))
    return out


def test_the_shift_is_the_windows_pooled_rate_over_the_earlier_one_and_a_missing_record_changes_nothing():
    rates = [0.1, 0.2, 0.1, 0.1, 0.1, 0.7, 0.8, 0.9, 0.8]
    shifts = _shifts(rates)
    assert all(math.isnan(s) for s in shifts[: rate_shift.WINDOW + rate_shift.MIN_BASELINE - 1])
    assert shifts[-1] == pytest.approx(0.8 - 0.12)  # mean(0.7, 0.8, 0.9, 0.8) - mean(0.1, 0.2, 0.1, 0.1, 0.1)
    with_gaps = _shifts(rates[:5] + [math.nan, math.nan] + rates[5:])
    assert with_gaps[-1] == pytest.approx(shifts[-1]) and math.isnan(with_gaps[5])


def test_records_weigh_by_their_calls_so_a_record_with_few_calls_barely_moves_the_rate():
    rates = [0.1] * 6 + [1.0, 0.1, 0.1, 0.1]  # one call, and it failed, at the 7th record
    calls = [0.5] * 6 + [0.02, 0.5, 0.5, 0.5]
    assert _shifts(rates, calls)[-1] == pytest.approx((0.02 * 1.0 + 1.5 * 0.1) / 1.52 - 0.1)
    assert _shifts(rates, calls)[-1] < 0.02 < _shifts(rates)[-1]


def test_cube_shifts_equal_the_streaming_ones_and_a_run_without_the_rate_is_never_judged():
    rng = np.random.default_rng(0)
    raw = np.full((2, 12, len(CUBE_SIGNALS)), np.nan)
    rate, calls = CUBE_SIGNALS.index("tool_failure_frequency"), CUBE_SIGNALS.index("tool_call_frequency")
    raw[0, :, rate], raw[0, :, calls] = rng.random(12), rng.random(12)
    raw[1, :, calls] = rng.random(12)  # calls without a failure rate: nothing to judge
    steps = np.tile(np.arange(1, 13), (2, 1))
    steps[0, 4] = 0  # a record the run did not log
    out = rate_shift.cube_shifts(np.where(steps[..., None] > 0, raw, np.nan), steps)
    present = steps[0] > 0
    expected = _shifts([v if p else math.nan for v, p in zip(raw[0, :, rate], present)], list(raw[0, :, calls]))
    np.testing.assert_allclose(out[0], expected)
    assert np.isnan(out[1]).all()


def _rows(run_id: str, seed: int, onset: int | None, learning: bool) -> list[dict]:
    """A tool run: a failure rate around its own level (falling as the policy learns the call format when
    ``learning``), stepping up by 0.5 from ``onset`` (a sandbox that starts failing)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, STEPS + 1):
        level = 0.6 - 0.5 * s / STEPS if learning else 0.15
        failing = onset is not None and s >= onset
        rows.append({
            "run_id": run_id, "step": s,
            "reward_mean": float(np.clip(0.4 + 0.005 * s + rng.normal(0, 0.04) - (0.1 if failing else 0), 0, 1)),
            "reward_std": 0.4 + rng.normal(0, 0.02),
            "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "entropy": 1.0 - 0.01 * s + rng.normal(0, 0.02),
            "completion_length_mean": 10 * np.exp(rng.normal(0, 0.05)),
            "tool_call_frequency": float(np.clip(0.4 + rng.normal(0, 0.05), 0, 1)),
            "tool_failure_frequency": float(np.clip(level + rng.normal(0, 0.06) + (0.5 if failing else 0), 0, 1)),
        })
    return rows


@pytest.fixture(scope="module")
def fitted() -> Detector:
    return fit_synthetic(lambda run_id, i, onset: _rows(run_id, i, onset, learning=i % 2 == 1), "tool_failure", 12)


def test_a_sandbox_that_starts_failing_alarms_with_the_failure_rate_as_evidence_offline_asstream(fitted):
    threshold = fitted.thresholds["a"]["rate_shift"]
    assert 0.0 < threshold < 0.5  # calibrated on the normal runs: above their steps, below the fault's
    alarms = streamed_alarms(fitted, _rows("failing", 99, onset=15, learning=False))
    assert alarms and 15 <= alarms[0].step < 15 + rate_shift.WINDOW
    shifted = [e for e in alarms[0].evidence if e.signal == "tool_failure_frequency"]
    assert shifted and shifted[0].direction == "up" and shifted[0].value > shifted[0].expected + threshold


def test_a_policy_learning_the_call_format_is_no_shift_and_a_rollback_restores_the_window(fitted):
    assert not stream(fitted, _rows("learns", 98, onset=None, learning=True))[1]
    first, again = replayed_score(fitted, _rows("rb", 97, onset=None, learning=False), upto=20, back_to=13)
    assert again == pytest.approx(first)


def test_a_threshold_no_normal_run_could_calibrate_is_saved_as_null_and_keeps_the_channel_off(fitted):
    saved = fitted.thresholds["a"]["rate_shift"]
    fitted.thresholds["a"]["rate_shift"] = math.inf  # fitted on runs none of which logs a tool failure rate
    try:
        data = json.loads(json.dumps(fitted.to_dict()))
        assert data["thresholds"]["a"]["rate_shift"] is None
        loaded = Detector.from_dict(data)
        assert loaded.thresholds["a"]["rate_shift"] == math.inf
        frame = pl.DataFrame(_rows("failing", 99, onset=15, learning=False))
        cube, steps = runs_cube(frame, ["failing"])
        off = loaded.score_cube(cube, steps, "a")[0]
        fitted.thresholds["a"]["rate_shift"] = saved
        assert (off <= fitted.score_cube(cube, steps, "a")[0]).all()  # the other channels alone
        assert (off < fitted.score_cube(cube, steps, "a")[0]).any()
    finally:
        fitted.thresholds["a"]["rate_shift"] = saved


def _trl_log(path, sandbox_fails_at: int | None) -> str:
    """A TRL GRPOTrainer log with tools (its log dicts, one per line): a failure rate of 0.1, 0.7 once the sandbox
    starts failing."""
    rng = np.random.default_rng(5)
    rows = []
    for s in range(1, 41):
        failing = sandbox_fails_at is not None and s >= sandbox_fails_at
        reward = 0.4 + 0.003 * s + rng.normal(0, 0.04) - (0.15 if failing else 0.0)
        rows.append({
            "loss": rng.normal(0, 0.01), "grad_norm": 0.5 * np.exp(rng.normal(0, 0.15)), "learning_rate": 1e-6,
            "completions/mean_length": 40 + rng.normal(0, 2), "completions/max_length": 64.0,
            "completions/clipped_ratio": float(np.clip(0.02 + rng.normal(0, 0.01), 0, 1)),
            "reward": float(np.clip(reward, 0, 1)), "reward_std": 0.4 + rng.normal(0, 0.02),
            "frac_reward_zero_std": float(np.clip(0.2 + rng.normal(0, 0.05), 0, 1)),
            "kl": 0.001 * s * np.exp(rng.normal(0, 0.1)), "entropy": 0.8 - 0.002 * s + rng.normal(0, 0.02),
            "clip_ratio/region_mean": 0.0, "tools/call_frequency": float(np.clip(0.6 + rng.normal(0, 0.05), 0, 2)),
            "tools/failure_frequency": float(np.clip((0.7 if failing else 0.1) + rng.normal(0, 0.04), 0, 1)),
            "epoch": s / 40, "step": s,
        })
    path.write_text("".join(json.dumps({k: float(v) for k, v in r.items()}) + "\n" for r in rows))
    return str(path)


def test_watching_a_trl_log_with_tools_the_shipped_detector_sees_the_sandbox_fail(tmp_path):
    from typer.testing import CliRunner

    from rftfm.cli import app
    from rftfm.cli.watch import EXIT_ALARM, EXIT_OK

    episodes, outputs = {}, {}
    for fails_at in (None, 25):
        summary = tmp_path / f"{fails_at}.json"
        log = _trl_log(tmp_path / f"{fails_at}.jsonl", fails_at)
        result = CliRunner().invoke(app, ["watch", log, "--format", "trl", "--json", str(summary)])
        assert result.exit_code == (EXIT_OK if fails_at is None else EXIT_ALARM), result.output
        episodes[fails_at] = json.loads(summary.read_text())["episodes"]
        outputs[fails_at] = " ".join(result.output.split())
    assert episodes[None] == []  # the same run without the fault: quiet
    (episode,) = episodes[25]
    start = episode["start_step"]
    assert 25 <= start <= 25 + rate_shift.WINDOW - 1 and episode["evidence"][0] == "tool_failure_frequency"
    assert f"diagnosis at step {start}: tool_failure" in outputs[25]  # diagnosed as the alarm starts
