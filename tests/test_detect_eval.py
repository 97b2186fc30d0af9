"""Detection evaluation: run-level rule, protocols A / B, false alarms, delay, CLI on a synthetic benchmark."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from test_detect_data import write_benchmark
from typer.testing import CliRunner

from rftfm.bench import intervals
from rftfm.bench.baselines.base import RunCubes
from rftfm.bench.eval_detection import (
    delays,
    evaluate_detection,
    false_alarms,
    protocol_table,
    run_outcomes,
    to_markdown,
)
from rftfm.cli import app
from rftfm.fm.cube import CUBE_SIGNALS as SIGNALS
from rftfm.fm.detect import Detector, DetectorConfig

FAST = DetectorConfig(num_rounds=25, folds=3)  # a small booster: these tests check the machinery, not the model


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    write_benchmark(root)
    return root


def _cubes(run_ids, steps=6):
    cube = np.zeros((len(run_ids), steps, len(SIGNALS)))
    return RunCubes(list(run_ids), cube, np.tile(np.arange(1, steps + 1), (len(run_ids), 1)))


def _test_runs():
    return pl.DataFrame(
        [
            {
                "run_id": "n1",
                "group": "normal",
                "control_or_fault": "normal",
                "fault_family": None,
                "fault_type": None,
                "fault_strength": None,
                "onset_step": None,
            },
            {
                "run_id": "c1",
                "group": "rf_hard_fault",
                "control_or_fault": "control",
                "fault_family": "rf",
                "fault_type": None,
                "fault_strength": None,
                "onset_step": 3,
            },
            {
                "run_id": "f_early",
                "group": "rf_hard_fault",
                "control_or_fault": "fault",
                "fault_family": "rf",
                "fault_type": "reward_noise",
                "fault_strength": "hard",
                "onset_step": 1,
            },
            {
                "run_id": "f_mid",
                "group": "rf_hard_fault",
                "control_or_fault": "fault",
                "fault_family": "rf",
                "fault_type": "reward_noise",
                "fault_strength": "hard",
                "onset_step": 3,
            },
        ]
    )


def test_flag_everything_scores_well_only_under_published_labels():
    runs = _test_runs()
    cubes = _cubes(runs["run_id"].to_list())
    out = run_outcomes(runs, cubes, np.ones(cubes.steps.shape, dtype=bool))
    a = protocol_table(out, "A")["rows"][0]
    b = protocol_table(out, "B")["rows"][0]
    # A: c1, f_early positive and detected; f_mid alarmed before onset -> false alarm and missed; n1 false alarm
    assert (a["tp"], a["fp"], a["fn"]) == (2, 2, 1)
    # B: only f_early detected; n1, c1 and f_mid's pre-onset alarm are false alarms
    assert (b["tp"], b["fp"], b["fn"]) == (1, 3, 1)
    assert b["f1"] < a["f1"]
    fa = false_alarms(out)
    assert fa["normal_runs"] == 2 and fa["normal_runs_alarmed"] == 2
    assert fa["normal_steps"] == 6 + 6 + 2  # n1, c1, and f_mid's two pre-onset steps
    assert fa["false_alarm_episodes"] == 3


def test_delay_counts_steps_after_onset_for_mid_run_faults():
    runs = _test_runs()
    cubes = _cubes(runs["run_id"].to_list())
    alarms = np.zeros(cubes.steps.shape, dtype=bool)
    alarms[3, 4:] = True  # f_mid: onset 3, first alarm step 5 -> delay 2
    alarms[2, 0] = True  # f_early: onset 1 (not a mid-run fault)
    out = run_outcomes(runs, cubes, alarms)
    d = delays(out)
    assert d["mid_run_faults"] == 1 and d["all"]["median"] == 2.0
    b = protocol_table(out, "B")["rows"][0]
    assert (b["tp"], b["fp"], b["fn"]) == (2, 0, 0) and b["f1"] == 100.0
    assert false_alarms(out)["false_alarm_episodes"] == 0


def test_evaluation_on_synthetic_benchmark(bench):
    result = evaluate_detection(
        bench,
        "seed",
        tiers=("a", "bc"),
        detector_config=FAST,
        baselines=["IsolationForest", "StaticRules", "FlagEverything"],
    )
    assert result["tiers"] == ["a", "bc"]
    methods = result["methods"]["bc"]
    assert list(methods) == ["RFT-FM", "RFT-FM profile", "IsolationForest", "StaticRules", "FlagEverything"]
    rft = methods["RFT-FM"]
    # every test run is scored once; the hard mid-run KL shift is what a self-referenced detector can see
    assert len(rft["runs"]) == result["folds"][0]["test_runs"]
    assert rft["false_alarms"]["pct_normal_runs_alarmed"] <= 30
    assert methods["FlagEverything"]["false_alarms"]["pct_normal_runs_alarmed"] == 100.0
    # mid-run and step-1 onsets are tabulated apart: flag-everything alarms before every mid-run onset
    assert methods["FlagEverything"]["mid_run"]["B"]["avg_f1"]["hard"] == 0.0
    md = to_markdown(result)
    assert "| RFT-FM |" in md and "Tier a" in md and "Tier bc" in md


def test_cli_fit_and_evaluate(bench, tmp_path):
    runner = CliRunner()
    artifact = tmp_path / "det.json"
    res = runner.invoke(app, ["fit", "detector", "--data", str(bench), "--out", str(artifact), "--rounds", "20"])
    assert res.exit_code == 0, res.output
    Detector.load(artifact)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    res = runner.invoke(
        app,
        [
            "bench",
            "evaluate",
            "detection",
            "--data",
            str(bench),
            "--split",
            "seed",
            "--baselines",
            "StaticRules",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--detector",
            str(artifact),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert set(data["methods"]["a"]) == {"RFT-FM", "RFT-FM profile", "StaticRules"}
    assert "Split: seed" in out_md.read_text() and "Written by `rftfm bench evaluate detection" in out_md.read_text()


def test_published_layout_without_parquet_or_seeds(bench, tmp_path):
    """The command runs on the published layout (JSONL + registries only: no run_info, no seeds)."""
    import shutil

    root = tmp_path / "published"
    shutil.copytree(bench, root)
    for p in list(root.glob("*/*/run_info.json")) + list(root.glob("*/*/*.parquet")):
        p.unlink()
    result = evaluate_detection(root, "seed", tiers=("a",), baselines=["StaticRules"], detector_config=FAST)
    assert result["folds"][0]["test_runs"] > 0
    assert "RFT-FM" in result["methods"]["a"]


@pytest.mark.parametrize("name", ["TranAD", "AnomalyTransformer", "LOF", "IsolationForest"])
def test_learned_baselines_score_a_strong_fault_above_normal(bench, name):
    from rftfm.bench.baselines import make_baselines
    from rftfm.fm.features import features_frame
    from rftfm.io.loader import load_benchmark

    loaded = load_benchmark(bench)
    features = features_frame(loaded.steps, loaded.trajectories)
    runs = loaded.runs
    normal = runs.filter(pl.col("control_or_fault") == "normal")["run_id"].to_list()
    easy = runs.filter((pl.col("fault_strength") == "easy") & (pl.col("onset_step") == 1))["run_id"].to_list()
    (baseline,) = make_baselines(0, [name])
    if hasattr(baseline, "epochs"):
        baseline.epochs = 2
    baseline.fit_calibrated(RunCubes.build(features, normal[:16]), 0.005)
    held_out = baseline.score(RunCubes.build(features, normal[16:]))
    faulty = baseline.score(RunCubes.build(features, easy))
    assert np.isfinite(held_out).all() and np.isfinite(faulty).all()
    assert np.median(np.nanmax(faulty, axis=1)) > np.median(np.nanmax(held_out, axis=1))
    assert np.isfinite(baseline.threshold)


def test_split_all_scores_every_run_with_a_given_detector(bench, tmp_path):
    from rftfm.bench.splits import split_runs
    from rftfm.fm.features import features_frame
    from rftfm.io.loader import load_benchmark

    loaded = load_benchmark(bench)
    train, _ = split_runs(loaded.runs, "seed")
    detector = Detector(FAST).fit(train, features_frame(loaded.steps, loaded.trajectories), tiers=("a",))
    result = evaluate_detection(bench, "all", tiers=("a",), detector=detector)
    assert result["folds"][0]["test_runs"] == loaded.runs.height and list(result["methods"]["a"]) == ["RFT-FM"]
    with pytest.raises(ValueError, match="fitted detector"):
        evaluate_detection(bench, "all")


def test_targets_table_from_saved_results(bench, tmp_path):
    result = evaluate_detection(
        bench, "seed", tiers=("a", "c"), baselines=["StaticRules"], detector_config=FAST, in_trainer=True
    )
    out_json, out_md = tmp_path / "seed.json", tmp_path / "targets.md"
    out_json.write_text(json.dumps(result, default=str))
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "evaluate",
            "detection-targets",
            "--config",
            str(out_json),
            "--seed",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
    )
    assert res.exit_code == 0, res.output
    text = out_md.read_text()
    assert "tier a: avg F1 easy ≥ 90" in text and "tier c: avg F1 hard ≥ 88" in text
    assert "tier a in the trainer: avg F1 easy ≥ 90" in text  # the TRL callback's rows beside the log's
    # 5 targets per tier (a, c) and method (from the log, in the trainer), 2 of held-out seeds
    assert text.count("| met |") + text.count("missed by") + text.count("not measured") == 22
    assert re.search(r"\| \d+\.\d-\d+\.\d \|", text)  # each F1's interval over resampled runs


def test_intervals_recompute_the_tables_f1_and_bracket_it(bench):
    result = evaluate_detection(bench, "seed", tiers=("a",), baselines=[], detector_config=FAST)
    rftfm = result["methods"]["a"]["RFT-FM"]
    groups = intervals.run_groups(rftfm["runs"])
    assert groups is not None  # the rows name their runs' groups
    got = intervals.intervals(rftfm["runs"], groups, reps=300)
    settings = [s for s, stored in rftfm["mid_run"]["B"]["avg_f1"].items() if stored is not None]
    assert settings and all(s in got for s in settings)
    for setting in settings:
        point, low, high = got[setting]
        assert point == pytest.approx(rftfm["mid_run"]["B"]["avg_f1"][setting]) and low <= point <= high
    point, low, high = got["healthy"]
    assert point == pytest.approx(rftfm["false_alarms"]["pct_normal_runs_alarmed"]) and low <= point <= high


def test_an_interrupted_evaluation_resumes_from_its_cache(bench, tmp_path):
    cache = tmp_path / "cache"
    first = evaluate_detection(
        bench, "seed", tiers=("a",), baselines=["StaticRules"], detector_config=FAST, cache=cache
    )
    files = sorted(p.name for p in cache.glob("*.parquet"))
    assert files == sorted(
        ["seed__a__RFT-FM.parquet", "seed__a__RFT-FM_profile.parquet", "seed__a__StaticRules.parquet"]
    )
    (cache / "seed__a__StaticRules.parquet").unlink()  # as if interrupted before the last method
    again = evaluate_detection(
        bench, "seed", tiers=("a",), baselines=["StaticRules"], detector_config=FAST, cache=cache
    )
    for name in first["methods"]["a"]:
        assert again["methods"]["a"][name]["mid_run"] == first["methods"]["a"][name]["mid_run"]


def test_a_cache_written_for_other_runs_is_refused(bench, tmp_path):
    from rftfm.bench.eval_detection import StaleCache

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "runs.sha256").write_text("0123456789abcdef\n")  # another benchmark's fingerprint
    with pytest.raises(StaleCache, match="delete it"):
        evaluate_detection(bench, "seed", tiers=("a",), baselines=["StaticRules"], detector_config=FAST, cache=cache)
    res = CliRunner().invoke(
        app, ["bench", "evaluate", "detection", "--data", str(bench), "--split", "seed", "--cache", str(cache)]
    )
    assert res.exit_code == 2 and "other runs" in res.output, res.output


def _trainer_rows(run_id: str, clip_from: int = 99, flip_from: int = 99) -> list[dict]:
    rng = np.random.default_rng(3)
    return [
        {"run_id": run_id, "step": s, "reward_mean": 0.4 + 0.01 * s + rng.normal(0, 0.02), "reward_std": 0.3,
         "kl": 0.01 * (1 + 0.05 * s), "entropy": 1.0 - 0.01 * s, "grad_norm": 1.0 + rng.normal(0, 0.1),
         "completion_length_mean": 20.0 + rng.normal(0, 0.5), "clip_ratio_region": 0.03 if s >= clip_from else 0.0,
         "traj_advantage_residual": 1.0 if s >= flip_from else 0.0, "traj_advantage_zeroed": 0.0}
        for s in range(1, 15)
    ]


def test_in_the_trainer_the_clip_ratio_and_the_handed_over_invariants_alarm_where_a_log_alone_cannot():
    from rftfm.bench.eval_detection import InTrainerMethod, RFTFMMethod, mask_tier
    from rftfm.fm.cube import runs_cube

    ids = ["stale_sampler", "flipped_advantages", "healthy"]
    rows = _trainer_rows(ids[0], clip_from=9) + _trainer_rows(ids[1], flip_from=9) + _trainer_rows(ids[2])
    frame = pl.DataFrame(rows)
    cube, steps = runs_cube(frame, ids)
    cubes = RunCubes(ids, cube, steps)
    detector = Detector.load_default()
    log_alone = RFTFMMethod("a", detector=detector).score(mask_tier(cubes, "a"))
    in_trainer = InTrainerMethod("a", detector=detector).score(mask_tier(cubes, "a", InTrainerMethod.handed_over))
    assert (log_alone < 1).all()  # a tier-a log has no invariants, and its clip ratio says nothing on its own
    assert (in_trainer[:2, 8:] > 1).all() and (in_trainer[:2, :8] < 1).all()  # both from step 9, not before
    np.testing.assert_array_equal(in_trainer[2], log_alone[2])  # a healthy run scores the same
    assert not detector.on_policy and not detector.invariants_known  # a shared detector is left as it was


def test_the_in_trainer_row_comes_beside_rft_fm_on_the_same_fit(bench):
    result = evaluate_detection(bench, "seed", tiers=("a",), detector_config=FAST, with_baselines=False,
                                in_trainer=True)
    methods = result["methods"]["a"]
    assert list(methods) == ["RFT-FM", "RFT-FM in the trainer"]
    assert len(methods["RFT-FM in the trainer"]["runs"]) == len(methods["RFT-FM"]["runs"])
    assert "#### RFT-FM in the trainer, tier a: recall by fault type" in to_markdown(result)
