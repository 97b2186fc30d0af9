"""The per-configuration detector: fit on normal runs, streaming == offline, calibrated alarms with evidence,
JSON artifact."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from test_detect_data import synth_run

from rftfm.fm.cube import CUBE_SIGNALS as SIGNALS
from rftfm.fm.cube import FlatStreak, runs_cube, tail_threshold
from rftfm.fm.features import features_frame, step_features
from rftfm.fm.profile_detect import DetectorConfig
from rftfm.fm.profile_detect import ProfileDetector as Detector


def _frames(runs: dict[str, list]) -> pl.DataFrame:
    rows = []
    for run_id, records in runs.items():
        for step, trajectories in records:
            rows.append({"run_id": run_id, "step": step.step, **step_features(step, trajectories)})
    return pl.DataFrame(rows, infer_schema_length=None)


@pytest.fixture(scope="module")
def fitted() -> Detector:
    runs = {f"n{i}": synth_run(f"n{i}", i) for i in range(30)}
    table = pl.DataFrame(
        {
            "run_id": list(runs),
            "task_group": ["arith_a"] * 30,
            "model_size": ["xs"] * 30,
            "control_or_fault": ["normal"] * 30,
        }
    )
    return Detector(DetectorConfig(min_config_runs=8)).fit(table, _frames(runs))


def test_fit_uses_only_normal_runs_and_learns_config_profile(fitted):
    assert fitted.fit_info["normal_runs"] == 30
    assert "arith_a|xs" in fitted.profiles
    assert all(c.threshold > 0 for c in fitted.calibration.values())


def test_fit_ignores_faulty_runs():
    runs = {f"n{i}": synth_run(f"n{i}", i) for i in range(6)}
    runs["bad"] = synth_run("bad", 99, onset=1, shift={"kl": 50.0})
    table = pl.DataFrame(
        {
            "run_id": list(runs),
            "task_group": ["a"] * 7,
            "model_size": ["xs"] * 7,
            "control_or_fault": ["normal"] * 6 + ["fault"],
        }
    )
    det = Detector().fit(table, _frames(runs))
    assert det.fit_info["normal_runs"] == 6


def test_held_out_normal_runs_rarely_alarm(fitted):
    alarmed = 0
    for seed in range(100, 140):
        records = synth_run("held", seed)
        fitted.reset("held", "arith_a", "xs")
        alarmed += any(fitted.observe(s, t) is not None for s, t in records)
    assert alarmed <= 2  # calibrated at 0.5 % out of sample; allow sampling noise on 40 runs


def test_mid_run_fault_alarms_after_onset_with_evidence(fitted):
    records = synth_run("f", 7, onset=6, shift={"kl": 4.0})
    fitted.reset("f", "arith_a", "xs")
    alarms = [a for s, t in records if (a := fitted.observe(s, t)) is not None]
    assert alarms, "a 5x KL shift must alarm"
    first = alarms[0]
    assert first.step >= 6 and first.step <= 8
    assert first.score > first.threshold
    top = first.evidence[0]
    assert top.signal == "kl" and top.direction == "up"
    assert top.since_step is not None and top.since_step >= 6
    assert top.value > top.expected


def test_downward_fault_reports_direction_down(fitted):
    records = synth_run("d", 8, onset=1, shift={"reward": -0.2})
    fitted.reset("d", "arith_a", "xs")
    alarms = [a for s, t in records if (a := fitted.observe(s, t)) is not None]
    assert alarms
    signals = {e.signal: e.direction for a in alarms for e in a.evidence}
    reward_like = {k: v for k, v in signals.items() if k in ("reward_mean", "traj_reward_mean", "eval_accuracy")}
    assert reward_like and set(reward_like.values()) == {"down"}


def test_streaming_offline_and_vectorised_agree(fitted):
    records = synth_run("f", 11, onset=4, shift={"kl": 2.0, "length": 1.0})
    fitted.reset("f", "arith_a", "xs")
    live = []
    for s, t in records:
        a = fitted.observe(s, t)
        live.append((s.step, fitted.state.last_score, a is not None))
    frame = _frames({"f": records})
    offline = fitted.score_run(frame, "arith_a", "xs")
    assert [a.step for a in offline] == [step for step, _, on in live if on]
    cube, steps = runs_cube(frame, ["f"])
    scores, threshold = fitted.score_cube(cube, steps, "arith_a", "xs")
    np.testing.assert_allclose(scores[0], [sc for _, sc, _ in live], rtol=1e-9)
    assert [int(i) + 1 for i in np.flatnonzero(scores[0] > threshold)] == [a.step for a in offline]


def test_the_stall_signal_counts_repeats_of_eval_accuracy_and_skips_missing_ones():
    flat = FlatStreak.new(2)
    seen = [flat.advance(np.array(pair)) for pair in ([0.5, 0.1], [0.5, 0.2], [np.nan, 0.2], [0.5, 0.3], [0.6, 0.3])]
    np.testing.assert_array_equal(np.array(seen), [[0, 0], [1, 0], [np.nan, 1], [2, 0], [0, 1]])


def test_a_policy_that_stops_moving_alarms_on_unchanged_eval_accuracy(fitted):
    """A learning rate far too low freezes greedy eval accuracy exactly, while every other signal
    stays within its normal range; live, offline and vectorised scoring agree on the stall signal."""
    records = synth_run("stall", 21, steps=12)
    frozen = records[4][0].eval_accuracy
    records = [(s.model_copy(update={"eval_accuracy": frozen}) if s.step >= 5 else s, t) for s, t in records]
    fitted.reset("stall", "arith_a", "xs")
    alarms = [a for s, t in records if (a := fitted.observe(s, t)) is not None]
    # the synthetic normal runs never repeat their (continuous) accuracy, so the first repeat already alarms
    assert alarms and alarms[0].step == 6 and all(a.step >= 6 for a in alarms)
    assert alarms[0].evidence[0].signal == "eval_unchanged_steps" and alarms[0].evidence[0].direction == "up"
    frame = _frames({"stall": records})
    assert [a.step for a in fitted.score_run(frame, "arith_a", "xs")] == [a.step for a in alarms]
    cube, _ = runs_cube(frame, ["stall"])
    np.testing.assert_array_equal(
        cube[0, :, SIGNALS.index("eval_unchanged_steps")], [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    )


def test_missing_signals_are_skipped_not_anomalies(fitted):
    records = synth_run("m", 5, missing_eval=True)
    fitted.reset("m", "arith_a", "xs")
    assert all(fitted.observe(s, t) is None for s, t in records)
    # a step with every metric missing and no trajectories is skipped too
    empty = records[0][0].model_copy(
        update={"step": 99, **{k: None for k in ("reward_mean", "kl", "entropy", "grad_norm")}}
    )
    assert fitted.observe(empty, []) is None


def test_unknown_configuration_falls_back_to_global_profile(fitted):
    fitted.reset("x", "never_seen_task", "xl")
    assert fitted.state.key == "*"
    records = synth_run("x", 3, onset=1, shift={"kl": 20.0, "grad": 5.0})
    assert any(fitted.observe(s, t) is not None for s, t in records)


def test_rolled_back_step_is_counted_not_scored(fitted):
    records = synth_run("r", 4)
    fitted.reset("r", "arith_a", "xs")
    for s, t in records[:5]:
        fitted.observe(s, t)
    before = fitted.skipped_steps
    assert fitted.observe(records[2][0], records[2][1]) is None
    assert fitted.skipped_steps == before + 1


def test_artifact_is_json_and_round_trips(fitted, tmp_path):
    path = tmp_path / "det.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "rftfm-detector" and data["features"] == list(SIGNALS)
    loaded = Detector.load(path)
    records = synth_run("f", 12, onset=3, shift={"kl": 4.0})
    frame = _frames({"f": records})
    a = [x.step for x in fitted.score_run(frame, "arith_a", "xs")]
    b = [x.step for x in loaded.score_run(frame, "arith_a", "xs")]
    assert a == b and a


def test_artifact_with_other_features_is_rejected(fitted, tmp_path):
    data = fitted.to_dict()
    data["features"] = data["features"][:-1]
    with pytest.raises(ValueError):
        Detector.from_dict(data)


def test_unfitted_detector_raises_clear_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        Detector().reset("r")


def test_tail_threshold_extrapolates_above_observed_maximum():
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 500)
    thr = tail_threshold(scores, 0.001)
    assert thr >= scores.max()
    assert 5.0 < thr < 10.0  # exponential: true 99.9 % quantile is ln(1000) = 6.9


def test_features_frame_path_matches_live_features(fitted):
    """The detector sees the same numbers from loaded DataFrames as from live records."""
    records = synth_run("f", 13)
    live = _frames({"f": records})
    steps = pl.DataFrame([s.model_dump(exclude={"extra", "fault_injection"}) for s, _ in records])
    trajs = pl.DataFrame(
        [
            {**t.model_dump(by_alias=False, exclude={"extra", "fault_injection", "flags"}), **t.flags.model_dump()}
            for _, ts in records
            for t in ts
        ]
    )
    offline = features_frame(steps, trajs)
    a = fitted.score_run(live, "arith_a", "xs")
    b = fitted.score_run(offline, "arith_a", "xs")
    assert [x.step for x in a] == [x.step for x in b]
