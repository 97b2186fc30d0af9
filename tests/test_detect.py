"""The configuration-free detector: fitted on some configurations, judging one it has never seen;
streaming == offline; rollbacks restore its state; tiers; JSON artifact; evidence in the run's own terms."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rftfm.fm.cube import runs_cube, runs_schedule
from rftfm.fm.detect import Detector, DetectorConfig, describe
from rftfm.fm.features import FEATURES
from rftfm.records import StepRecord

STEPS = 30


def _run(run_id: str, seed: int, scale: float, onset: int | None = None, fault: str | None = None) -> list[dict]:
    """Rows of one synthetic run of a configuration whose units are ``scale`` times another's."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, STEPS + 1):
        on = onset is not None and s >= onset
        kl = scale * 0.002 * np.exp(0.06 * s) * np.exp(rng.normal(0, 0.15)) * (25.0 if on and fault == "kl" else 1.0)
        length = 10 * scale * np.exp(-0.01 * s + rng.normal(0, 0.05)) * (0.2 if on and fault == "length" else 1.0)
        reward = np.clip(0.3 + 0.01 * s + rng.normal(0, 0.03) - (0.25 if on and fault == "length" else 0.0), 0, 1)
        rows.append(
            {
                "run_id": run_id,
                "step": s,
                "reward_mean": reward,
                "reward_std": 0.4 + rng.normal(0, 0.02),
                "kl": kl,
                "entropy": scale * (1.0 - 0.01 * s) * np.exp(rng.normal(0, 0.03)),
                "grad_norm": scale * np.exp(rng.normal(0, 0.2)) * (6.0 if on and fault == "kl" else 1.0),
                "completion_length_mean": length,
                "completion_length_max": 2 * length,
                "truncated_ratio": float(np.clip(0.02 + rng.normal(0, 0.01), 0, 1)),
            }
        )
    return rows


def _bench(scales: dict[str, float], per_config: int = 8, seed0: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    runs, rows, seed = [], [], seed0
    for config, scale in scales.items():
        for i in range(per_config):
            for kind, fault in (("normal", None), ("fault", "kl"), ("fault", "length")):
                seed += 1
                run_id = f"{config}-{kind}-{fault}-{i}"
                onset = 10 + i if kind == "fault" else None
                runs.append(
                    {
                        "run_id": run_id,
                        "task_group": config,
                        "model_size": "m",
                        "control_or_fault": kind,
                        "onset_step": onset,
                        "fault_type": fault,
                    }
                )
                rows += _run(run_id, seed, scale, onset, fault)
    frame = pl.DataFrame(rows)
    return pl.DataFrame(runs), frame.with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(f) for f in FEATURES if f not in frame.columns]
    ).select("run_id", "step", *FEATURES)


@pytest.fixture(scope="module")
def fitted() -> Detector:
    runs, features = _bench({"A": 1.0, "B": 0.01, "C": 30.0})
    return Detector(DetectorConfig(num_rounds=60, folds=3)).fit(runs, features, tiers=("a",))


def _first_alarms(detector: Detector, runs: pl.DataFrame, features: pl.DataFrame) -> dict[str, int | None]:
    cube, steps = runs_cube(features, runs["run_id"].to_list())
    scores, threshold = detector.score_cube(cube, steps, "a")
    return {
        r: (int(np.argmax(row > threshold)) + 1 if (row > threshold).any() else None)
        for r, row in zip(runs["run_id"].to_list(), scores)
    }


def test_an_unseen_configuration_in_other_units_is_judged_against_itself(fitted):
    runs, features = _bench({"D": 1000.0}, per_config=10, seed0=500)
    first = _first_alarms(fitted, runs, features)
    onsets = dict(zip(runs["run_id"].to_list(), runs["onset_step"].to_list()))
    normal = [r for r in first if "-normal-" in r]
    faulty = [r for r in first if "-fault-" in r]
    assert sum(first[r] is not None for r in normal) <= 1
    detected = [r for r in faulty if first[r] is not None and first[r] >= onsets[r]]
    assert len(detected) >= 0.9 * len(faulty)
    delays = [first[r] - onsets[r] for r in detected]
    assert np.median(delays) <= 2


def _records(rows: list[dict]) -> list[StepRecord]:
    return [StepRecord(**{k: v for k, v in r.items()}) for r in rows]


def test_streaming_gives_the_offline_scores_and_alarms_with_evidence(fitted):
    rows = _run("live", 900, 3.0, onset=12, fault="kl")
    frame = pl.DataFrame(rows)
    cube, steps = runs_cube(frame, ["live"])
    offline, threshold = fitted.score_cube(cube, steps, "a")
    fitted.reset("live")
    live, alarms = [], []
    for record in _records(rows):
        alarm = fitted.observe(record)
        live.append(fitted.last_score)
        if alarm is not None:
            alarms.append(alarm)
    np.testing.assert_allclose(live, offline[0], rtol=1e-9)
    assert alarms and alarms[0].step >= 12
    evidence = {e.signal: e for e in alarms[0].evidence}
    assert "kl" in evidence and evidence["kl"].direction == "up"
    kl = evidence["kl"]
    assert kl.expected is not None and kl.value > 5 * kl.expected  # against the run's own baseline
    assert "KL" in describe(kl) and "before" in describe(kl)


def test_a_signal_at_its_own_baseline_is_never_evidence_whatever_the_model_made_of_it(fitted, monkeypatch):
    rows = _run("flat", 903, 3.0, onset=12, fault="kl")
    for r in rows:  # a task without tools: its tool-call rate sits at 0 throughout
        r["tool_call_frequency"] = 0.0
    booster = fitted.models["a"]
    names = [fitted.tracker.names[c] for c in fitted._columns("a")]
    pushed = [i for i, n in enumerate(names) if n.startswith("tool_call_frequency:")]

    class Pushing:  # the model, with the flat signal's features pushing the score up (as they can beside others)
        def predict(self, x, **kwargs):
            out = booster.predict(x, **kwargs)
            if kwargs.get("pred_contrib"):
                out = np.array(out, copy=True)
                out[:, pushed] += 1.0
            return out

        def __getattr__(self, name):
            return getattr(booster, name)

    monkeypatch.setitem(fitted.models, "a", Pushing())
    fitted.reset("flat")
    alarms = [a for a in map(fitted.observe, _records(rows)) if a is not None]
    assert alarms and all(e.signal != "tool_call_frequency" for a in alarms for e in a.evidence)
    assert "kl" in {e.signal for e in alarms[0].evidence}


def test_a_lowered_alarm_threshold_alarms_at_every_record_scoring_above_it(fitted):
    rows = _run("low", 902, 1.0)
    scores, alarmed = [], []
    for threshold in (1.0, 0.5):
        fitted.reset("low")
        fitted.alarm_threshold = threshold
        for record in _records(rows):
            alarm = fitted.observe(record)
            scores.append((threshold, fitted.last_score))
            alarmed.append(alarm is not None and alarm.threshold == threshold)
    fitted.alarm_threshold = 1.0
    assert alarmed == [score > threshold for threshold, score in scores]
    assert any(0.5 < s <= 1.0 for _, s in scores)  # some record alarms only at the lowered threshold
    assert [s for t, s in scores if t == 1.0] == [s for t, s in scores if t == 0.5]  # the scores do not change


def test_a_calibrated_channel_alarms_on_two_records_in_a_row_not_on_one(fitted):
    rows = _run("blip", 905, 1.0)
    rows[14]["kl"] *= 25.0  # one record's KL and grad norm spike (step 15)
    rows[14]["grad_norm"] *= 6.0
    cube, steps = runs_cube(pl.DataFrame(rows), ["blip"])
    assert fitted.config.consecutive == 2  # the default
    confirmed, _ = fitted.score_cube(cube, steps, "a")
    fitted.config.consecutive = 1
    try:
        alone, _ = fitted.score_cube(cube, steps, "a")
    finally:
        fitted.config.consecutive = 2
    assert alone[0, 14] > 1 and not confirmed[0, 14] > 1  # the spike's record alone is not an alarm
    # the records after still carry its mark (the tracker's baseline moved): confirmed by the record before
    np.testing.assert_allclose(confirmed[0, 15:20], np.minimum(alone[0, 14:19], alone[0, 15:20]))
    fitted.reset("blip")
    live = [fitted.observe(r) for r in _records(rows)]
    assert live[14] is None and live[15] is not None and live[15].step == 16


def test_a_rolled_back_step_restores_the_state_from_before_it(fitted):
    rows = _run("rb", 901, 1.0)
    records = _records(rows)
    fitted.reset("rb")
    first = []
    for r in records[:20]:
        fitted.observe(r)
        first.append(fitted.last_score)
    for r in records[15:20]:  # a rollback to step 15: the same steps come again
        fitted.observe(r)
    assert fitted.resumes == 1 and fitted.last_score == pytest.approx(first[19])
    fitted.observe(records[5])  # further back than the kept snapshots reach is fine too
    assert fitted.last_score == pytest.approx(first[5])


def _with_learning_rate(rows: list[dict], push_at: int | None = None, factor: float = 30.0) -> list[dict]:
    """A cosine schedule's logged learning rate, multiplied by ``factor`` from step ``push_at`` on."""
    for r in rows:
        lr = 1e-5 * 0.5 * (1 + np.cos(np.pi * r["step"] / (STEPS + 1)))
        r["learning_rate"] = lr * (factor if push_at is not None and r["step"] >= push_at else 1.0)
    return rows


def test_a_learning_rate_push_alarms_at_its_record_with_the_jump_as_evidence_offline_as_live(fitted):
    rows = _with_learning_rate(_run("lr", 903, 1.0), push_at=18)
    frame = pl.DataFrame(rows)
    cube, steps = runs_cube(frame, ["lr"])
    offline, _ = fitted.score_cube(cube, steps, "a", runs_schedule(frame, ["lr"], steps.shape[1]))
    fitted.reset("lr")
    live, alarms = [], []
    for record in _records(rows):
        alarm = fitted.observe(record)
        live.append(fitted.last_score)
        alarms += [alarm] if alarm is not None else []
    np.testing.assert_allclose(live, offline[0], rtol=1e-9)
    assert alarms and alarms[0].step == 18
    jump = alarms[0].evidence[0]
    assert jump.signal == "learning_rate" and jump.direction == "up" and jump.since_step == 17
    assert jump.ratio == pytest.approx(30.0, rel=0.2) and "learning rate" in describe(jump)
    without, _ = fitted.score_cube(cube, steps, "a")  # no learning rate given: the channel is silent
    assert not (without[0] > 1).any()


def test_the_callers_own_learning_rate_change_is_not_a_jump_and_a_rollback_restores_the_schedule(fitted):
    rows = _with_learning_rate(_run("own", 904, 1.0), push_at=18, factor=0.1)
    records = _records(rows)
    fitted.reset("own")
    for r in records[:17]:
        fitted.observe(r)
    fitted.expect_learning_rate_change(0.1)  # the loop cut it itself
    assert fitted.observe(records[17]) is None
    for r in records[18:]:
        fitted.observe(r)
    alarm = fitted.observe(records[17])  # rolled back to step 18: judged against step 17 again, unannounced
    assert alarm is not None and alarm.evidence[0].signal == "learning_rate" and alarm.evidence[0].direction == "down"


def test_a_log_without_kl_or_with_gaps_is_scored_without_error(fitted):
    rows = _run("nokl", 902, 1.0)
    fitted.reset("nokl")
    for r in rows:
        r.pop("kl")
        fitted.observe(StepRecord(**r))
        assert 0.0 <= fitted.last_score <= 1.0
    fitted.reset("gaps")
    for s in (1, 5, 10, 15):  # logging_steps = 5
        fitted.observe(StepRecord(run_id="gaps", step=s, reward_mean=0.4, entropy=1.0))
    assert fitted.skipped_steps == 0


def test_artifact_is_json_and_round_trips(fitted, tmp_path):
    path = tmp_path / "det.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "rftfm-zero-shot-detector" and set(data["models"]) == {"a"}
    again = Detector.load(path)
    runs, features = _bench({"E": 5.0}, per_config=2, seed0=700)
    cube, steps = runs_cube(features, runs["run_id"].to_list())
    np.testing.assert_allclose(again.score_cube(cube, steps, "a")[0], fitted.score_cube(cube, steps, "a")[0])
    assert again.config.consecutive == 2
    del data["config"]["consecutive"]  # an artifact saved before the setting was calibrated record by record
    path.write_text(json.dumps(data))
    assert Detector.load(path).config.consecutive == 1
    data["signals"] = data["signals"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="signal list"):
        Detector.load(path)


def test_unfitted_detector_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="not fitted"):
        Detector().reset("r")


def test_a_per_configuration_artifact_combines_with_the_default(tmp_path):
    from test_detect_data import synth_run
    from test_profile_detect import _frames

    from rftfm.fm.detect import CombinedDetector, load_artifact
    from rftfm.fm.profile_detect import ProfileDetector

    runs = {f"n{i}": synth_run(f"n{i}", i) for i in range(12)}
    table = pl.DataFrame({"run_id": list(runs), "task_group": ["mine"] * 12, "model_size": ["m"] * 12,
                          "control_or_fault": ["normal"] * 12})
    path = tmp_path / "profile.json"
    ProfileDetector().fit(table, _frames(runs)).save(path)
    combined = load_artifact(path)
    assert isinstance(combined, CombinedDetector)
    combined.reset("shifted", "mine", "m")
    alarms = [combined.observe(s, t) for s, t in synth_run("shifted", 99, onset=6, shift={"kl": 30.0})]
    assert any(a is not None and a.step >= 6 for a in alarms)


def test_a_held_out_accuracy_that_rises_is_no_surprise_but_one_that_falls_is():
    """The surprise channel counts only the harmful direction of a signal the registry marks ``benign`` (a held-out
    accuracy rising as a run learns: a tool format that suddenly clicks alarmed healthy runs before)."""
    from rftfm.fm.detect import counted_range

    assert counted_range("eval_accuracy") == (-np.inf, 0.0) and counted_range("kl") == (-np.inf, np.inf)
    detector = Detector.load_default()
    detector.config.surprise_reads = "tier"  # (the default gates a held-out accuracy: see the test below)
    x = np.zeros(len(detector.tracker.names))
    column = detector.tracker.names.index("eval_accuracy:z")
    x[column] = 12.0
    assert float(detector._surprise(x, "c")) == 0.0
    x[column] = -12.0
    assert float(detector._surprise(x, "c")) > 0.0
    assert float(detector._surprise(x, "a")) == 0.0  # tier a has no held-out accuracy


def test_the_surprise_channel_reads_the_step_metrics_and_a_warmed_up_held_out_accuracy(fitted, tmp_path):
    """The surprise channel reads the step metrics a framework logs at every record, in every tier, and a held-out
    accuracy's fall only once the run's warm-up of it is complete (a held-out accuracy measured on a small set every
    few records moved it in healthy runs at their first records); trajectory aggregates reach the detector through its
    learned channel. ``"step"`` reads the step metrics alone; an artifact saved before the setting, the tier's
    signals."""
    from rftfm.fm.detect import TIERS, UNSURPRISING, surprise_signals

    step_metrics = tuple(s for s in TIERS["a"] if s not in UNSURPRISING)
    assert fitted.config.surprise_reads == "step+eval"
    assert surprise_signals("b") == surprise_signals("a") == surprise_signals("c", "step") == step_metrics
    assert surprise_signals("bc") == surprise_signals("c") == step_metrics + ("eval_accuracy",)
    assert "reward_minus_eval" in surprise_signals("c", "tier") and "reward_minus_eval" not in surprise_signals("c")
    with pytest.raises(ValueError, match="surprise_reads"):
        surprise_signals("a", "all")
    with pytest.raises(ValueError, match="surprise_reads"):  # a setting no channel reads fails when it is made
        DetectorConfig(surprise_reads="all")
    names = fitted.tracker.names
    x = np.zeros(len(names))
    x[names.index("eval_accuracy:z")] = -12.0
    x[names.index("eval_accuracy:change0")] = np.nan  # still in its warm-up
    assert float(fitted._surprise(x, "c")) == 0.0
    x[names.index("eval_accuracy:change0")] = -0.3
    assert float(fitted._surprise(x, "c")) > 0.0 == float(fitted._surprise(x, "a"))
    x[names.index("eval_accuracy:z")] = 12.0  # a rise is no surprise
    assert float(fitted._surprise(x, "c")) == 0.0
    x[names.index("kl:z")] = 12.0
    assert float(fitted._surprise(x, "c")) == float(fitted._surprise(x, "a")) > 0.0
    fitted.config.surprise_reads, fitted._surprise_columns = "step", {}
    x[names.index("eval_accuracy:z")] = -40.0
    assert float(fitted._surprise(x, "c")) == float(fitted._surprise(x, "a"))
    fitted.config.surprise_reads, fitted._surprise_columns = "step+eval", {}
    path = tmp_path / "det.json"
    fitted.save(path)
    data = json.loads(path.read_text())
    assert Detector.load(path).config.surprise_reads == "step+eval"
    del data["config"]["surprise_reads"]
    path.write_text(json.dumps(data))
    assert Detector.load(path).config.surprise_reads == "tier"
