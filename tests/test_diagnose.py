"""Diagnoser: type / family, evidence, abstention, persistence, evaluation and CLI on a synthetic benchmark.

The fixture writes a small benchmark in the published layout (RunWriter) whose faulty runs
carry clear, known fingerprints after their onset, so the tests check real behaviour end to
end (writer -> loader -> features -> Diagnoser) in a few seconds.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rftfm.bench.diagnosis_baselines import ExpertRules, NearestFingerprint
from rftfm.bench.eval_diagnosis import (
    evaluate_split,
    fallback_alarm_steps,
    fallback_alarms,
    markdown_report,
    plot_confusion,
)
from rftfm.faults.taxonomy import FAULT_TYPES, group_dir
from rftfm.fm import level_shift
from rftfm.fm.diagnose import Diagnoser, summary_sentence
from rftfm.fm.diagnosis_features import diagnosis_matrix
from rftfm.fm.features import FEATURES, features_frame
from rftfm.io.faultbench import RunWriter
from rftfm.io.loader import load_benchmark
from rftfm.records import RunInfo, StepRecord, TrajectoryRecord

STEPS = 12
TYPES = ("reward_hacking", "lr_low", "length_truncation", "zero_variance")


def _metrics(kind: str, step: int, onset: int, rng: np.random.Generator) -> dict[str, float]:
    m = {
        "reward_mean": 0.2 + 0.03 * step + rng.normal(0, 0.04),
        "reward_std": 0.4 + rng.normal(0, 0.03),
        "eval_accuracy": 0.2 + 0.02 * step + rng.normal(0, 0.02),
        "kl": abs(0.01 * step + rng.normal(0, 0.004)),
        "entropy": 0.8 - 0.01 * step + rng.normal(0, 0.02),
        "policy_loss": rng.normal(0.01, 0.01),
        "grad_norm": abs(1.5 + rng.normal(0, 0.2)),
        "clip_ratio_region": 0.0,
        "completion_length_mean": 3.0 + rng.normal(0, 0.1),
        "completion_length_max": 5.0,
        "truncated_ratio": max(0.0, rng.normal(0.01, 0.01)),
        "frac_zero_std_groups": float(np.clip(rng.normal(0.3, 0.08), 0, 1)),
    }
    if step >= onset:
        if kind == "reward_hacking":
            m["reward_mean"] += 0.3
            m["eval_accuracy"] -= 0.15
        elif kind == "lr_low":
            m["kl"] *= 0.03
            m["reward_mean"] = 0.2 + rng.normal(0, 0.04)
        elif kind == "length_truncation":
            m["truncated_ratio"], m["completion_length_mean"] = 0.6 + rng.normal(0, 0.05), 2.0
        elif kind == "zero_variance":
            m["frac_zero_std_groups"], m["grad_norm"] = 0.9, m["grad_norm"] * 0.2
        elif kind == "novel":  # a pattern no training type shows
            m["entropy"] += 3.0
            m["clip_ratio_region"] = 0.8
            m["policy_loss"] += 5.0
    return m


def _write_run(root: Path, info: RunInfo, kind: str) -> None:
    rng = np.random.default_rng(info.seed)
    writer = RunWriter(root, info)
    onset = info.onset_step or STEPS + 1
    for step in range(1, STEPS + 1):
        m = _metrics(kind, step, onset, rng)
        trajs = [
            TrajectoryRecord(
                run_id=info.run_id,
                rollout_step=step,
                prompt_id=f"p{i // 4}",
                group_id=i // 4,
                reward=float(rng.random() < m["reward_mean"]),
                response_length=int(round(m["completion_length_mean"])),
                advantage=float(rng.normal()),
                repetition_ratio=0.1,
                unique_token_ratio=0.9,
                flags={"truncated": bool(rng.random() < m["truncated_ratio"])},
            )
            for i in range(8)
        ]
        writer(StepRecord(run_id=info.run_id, step=step, **m), trajs)
    writer.commit()


def _runs(seeds: range, onsets: tuple[int, ...] = (1, 5)) -> list[tuple[RunInfo, str]]:
    out = []
    seed = iter(seeds)
    for kind in TYPES:
        ftype = FAULT_TYPES[kind]
        for i in range(8):
            s = next(seed)
            strength = "easy" if i % 2 == 0 else "hard"
            out.append(
                (
                    RunInfo(
                        run_id=f"{kind}-{s}",
                        group=group_dir(ftype.family, strength),
                        task_group="arith_a",
                        model_size="xs",
                        seed=s,
                        control_or_fault="fault",
                        fault_family=ftype.family,
                        fault_type=kind,
                        fault_strength=strength,
                        onset_step=onsets[i % len(onsets)],
                        num_steps=STEPS,
                    ),
                    kind,
                )
            )
    for i in range(10):
        s = next(seed)
        out.append(
            (
                RunInfo(
                    run_id=f"normal-{s}",
                    group="normal",
                    task_group="arith_a",
                    model_size="xs",
                    seed=s,
                    control_or_fault="normal",
                    num_steps=STEPS,
                ),
                "normal",
            )
        )
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synthetic-bench")
    for info, kind in _runs(range(1, 1000)):
        _write_run(root, info, kind)
    loaded = load_benchmark(root)
    return root, loaded.runs, features_frame(loaded.steps, loaded.trajectories)


@pytest.fixture(scope="module")
def fitted(bench):
    _, runs, features = bench
    return Diagnoser().fit(runs, features)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory):
    """Unseen runs (other seeds) plus one run with a novel pattern, for inference tests."""
    root = tmp_path_factory.mktemp("fresh-runs")
    runs = _runs(range(5000, 6000), onsets=(5,))
    for info, kind in runs:
        _write_run(root, info, kind)
    novel = RunInfo(
        run_id="novel-1",
        group="normal",
        task_group="arith_a",
        model_size="xs",
        seed=77,
        control_or_fault="normal",
        onset_step=5,
        num_steps=STEPS,
    )
    _write_run(root, novel, "novel")
    loaded = load_benchmark(root)
    return root, loaded.runs, features_frame(loaded.steps, loaded.trajectories)


def test_diagnoses_unseen_runs_at_alarm_time(fitted: Diagnoser, fresh) -> None:
    _, runs, features = fresh
    correct = 0
    faulty = runs.filter(pl.col("control_or_fault") == "fault")
    for row in faulty.iter_rows(named=True):
        d = fitted.diagnose(features, row["run_id"], row["onset_step"] + 2, task_group="arith_a", model_size="xs")
        assert abs(sum(h.probability for h in d.ranked) - 1) < 1e-3
        assert [h.probability for h in d.ranked] == sorted((h.probability for h in d.ranked), reverse=True)
        correct += d.top is not None and d.top.fault_type == row["fault_type"] and d.top.family == row["fault_family"]
    assert correct / faulty.height >= 0.9


def test_evidence_and_summary_name_the_moved_signals(fitted: Diagnoser, fresh) -> None:
    _, runs, features = fresh
    run_id = runs.filter(pl.col("fault_type") == "reward_hacking")["run_id"][0]
    d = fitted.diagnose(features, run_id, 9, task_group="arith_a", model_size="xs")
    moved = {e.signal: e for e in d.evidence}
    assert moved["reward_mean"].direction == "up"
    # the gap between train reward and held-out accuracy opened at the onset (step 5)
    assert moved["reward_minus_eval"].direction == "up" and moved["reward_minus_eval"].since_step == 5
    assert moved["reward_mean"].since_step in (4, 5, 6)
    assert moved["reward_mean"].value > moved["reward_mean"].expected
    assert d.summary.startswith("reward_hacking since step")
    assert "train reward" in d.summary and "before step 5" in d.summary


def test_abstains_on_a_pattern_no_known_fingerprint_fits(fitted: Diagnoser, fresh) -> None:
    _, _, features = fresh
    d = fitted.diagnose(features, "novel-1", 9, task_group="arith_a", model_size="xs")
    assert d.unknown and d.top is None
    assert d.summary.startswith("unknown fault")
    normal_before_onset = fitted.diagnose(features, "novel-1", 3, task_group="arith_a", model_size="xs")
    assert not any(e.signal == "clip_ratio_region" for e in normal_before_onset.evidence)


def test_uses_only_history_up_to_the_step_and_ignores_labels(fitted: Diagnoser, fresh) -> None:
    _, runs, features = fresh
    run_id = runs.filter(pl.col("fault_type") == "length_truncation")["run_id"][0]
    full = fitted.diagnose(features, run_id, 6)
    cut = fitted.diagnose(features.filter(pl.col("step") <= 6), run_id, 6)
    labelled = fitted.diagnose(features.with_columns(fault_active=pl.lit(False)), run_id, 6)
    assert full.model_dump() == cut.model_dump() == labelled.model_dump()
    assert fitted.diagnose(features, run_id, 6).top.fault_type == "length_truncation"


def test_save_load_round_trip_is_json(fitted: Diagnoser, fresh, tmp_path: Path) -> None:
    _, runs, features = fresh
    path = fitted.save(tmp_path / "diag.json")
    data = json.loads(path.read_text())
    assert data["format"] == "rftfm-diagnoser" and isinstance(data["lightgbm_model"], str)
    loaded = Diagnoser.load(path)
    for run_id in runs["run_id"].to_list()[:6]:
        assert loaded.diagnose(features, run_id, 8).model_dump() == fitted.diagnose(features, run_id, 8).model_dump()
    assert data["task_levels"] and loaded.tracker.config.task_levels
    del data["task_levels"]  # an artifact written before the diagnoser read the task-set levels
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert not Diagnoser.load(tmp_path / "old.json").tracker.config.task_levels


def test_an_artifact_reading_other_features_is_refused(fitted: Diagnoser, tmp_path: Path) -> None:
    data = json.loads(fitted.save(tmp_path / "diag.json").read_text())
    data["feature_names"] = [n for n in data["feature_names"] if not n.startswith("shift.")]  # written before them
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="reads other features"):
        Diagnoser.load(tmp_path / "old.json")


def test_the_level_shift_feature_is_the_channels_statistic_at_the_diagnosis_step(fitted: Diagnoser) -> None:
    rng = np.random.default_rng(3)
    sd = [0.4 * float(np.exp(rng.normal(0, 0.05))) for _ in range(30)] + [1.1] * 4
    frame = pl.DataFrame({"run_id": ["r"] * 34, "step": list(range(1, 35)), "reward_std": sd,
                          "reward_mean": [0.3 + 0.01 * rng.normal() for _ in range(34)]})
    features = frame.with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(f) for f in FEATURES if f not in frame.columns]
    )
    x, _ = diagnosis_matrix(features, {"r": [30, 34]}, fitted.tracker)
    names = fitted.feature_names
    state = level_shift.LevelState()
    expected = [state.advance(np.array([sd[i] if s == "reward_std" else features[s][i] for s in level_shift.SIGNALS],
                                       dtype=float))[0] for i in range(34)]
    k = level_shift.SIGNALS.index("reward_std")
    assert x[1, names.index("shift.reward_std")] == pytest.approx(expected[33][k]) and expected[33][k] > 10
    assert abs(x[0, names.index("shift.reward_std")]) < 3  # before the step: no shift
    assert np.isnan(x[:, names.index("shift.policy_loss")]).all()  # a signal the channel does not judge


def test_vectorised_scores_match_single_diagnoses(fitted: Diagnoser, fresh) -> None:
    _, runs, features = fresh
    ids = runs["run_id"].to_list()[:8]
    x, keys = diagnosis_matrix(features, {r: [7] for r in ids}, fitted.tracker)
    prob, unknown = fitted.scores(x)
    for (run_id, step), p, u in zip(keys, prob, unknown):
        d = fitted.diagnose(features, run_id, step, task_group="arith_a", model_size="xs")
        assert d.ranked[0].fault_type == fitted.classes[int(p.argmax())] and d.unknown == bool(u)


def test_baselines_rank_the_obvious_type(fitted: Diagnoser, bench, fresh) -> None:
    _, runs, features = bench
    faulty = runs.filter(pl.col("control_or_fault") == "fault")
    x, keys = diagnosis_matrix(features, {r: [10] for r in faulty["run_id"]}, fitted.tracker)
    label = dict(faulty.select("run_id", "fault_type").iter_rows())
    knn = NearestFingerprint(k=3).fit(x, [label[r] for r, _ in keys])
    _, fruns, ffeat = fresh
    trunc = fruns.filter(pl.col("fault_type") == "length_truncation")["run_id"][0]
    xq, _ = diagnosis_matrix(ffeat, {trunc: [9]}, fitted.tracker)
    assert knn.classes[int(knn.predict_proba(xq).argmax())] == "length_truncation"
    rules = ExpertRules(fitted.feature_names)
    assert rules.classes[int(rules.predict_proba(xq).argmax())] == "length_truncation"


def test_evaluation_reports_every_metric(bench, tmp_path: Path) -> None:
    _, runs, features = bench
    result, _ = evaluate_split(
        runs, features, "seed", alarm_fn=fallback_alarms, leave_one_type_out=True, tiers=("a", "bc")
    )
    d = result["tiers"]["bc"]["diagnoser"]
    assert result["test_faulty_runs"] > 0 and d["all"]["n"] == result["test_faulty_runs"]
    mid = [r for r in runs.filter(pl.col("onset_step") > 1)["run_id"].to_list()]
    assert mid and d["all"]["type_top3"] >= d["all"]["type_top1"] >= 0.4  # step-1 onsets have no healthy past
    assert set(result["tiers"]["a"]["baselines"]) == {"knn", "expert_rules"}
    assert sum(map(sum, result["tiers"]["a"]["confusion"]["matrix"])) == result["test_faulty_runs"]
    rows = result["tiers"]["a"]["runs"]  # each run's diagnosis, agreeing with the metrics
    assert len(rows) == result["test_faulty_runs"] and {r["fold"] for r in rows} == set(result["folds"])
    top1 = np.mean([r["diagnosed"] == r["true"] for r in rows])
    assert top1 == pytest.approx(result["tiers"]["a"]["diagnoser"]["all"]["type_top1"])
    assert result["leave_one_type_out"]["per_type"]
    text = markdown_report(result, "conf.png")
    assert "| a | Diagnoser | all |" in text and "Leave-one-type-out" in text and "![confusion" in text
    png = plot_confusion(result["tiers"]["a"]["confusion"], tmp_path / "conf.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert result["tiers"]["a"]["diagnoser"]["detected easy"] == {"n": 0}  # no run was diagnosed at an alarm

    def at_an_alarm(r, f, fold):  # as if a detector had alarmed at onset + 2 on every run
        steps, _ = fallback_alarms(r, f, fold)
        return steps, dict.fromkeys(steps, "detector")

    folds = result["folds"]
    result, _ = evaluate_split(runs, features, "seed", alarm_fn=at_an_alarm, tiers=("a", "a-trainer"), only=folds)
    assert result["folds"] == folds
    assert result["tiers"]["a-trainer"]["diagnoser"]["all"]["n"] == result["test_faulty_runs"]
    d = result["tiers"]["a"]["diagnoser"]
    assert d["detected easy"] == d["easy"] and result["alarm_source"] == {"detector": result["test_faulty_runs"]}
    assert "| a | Diagnoser | detected easy |" in markdown_report(result)


def test_cli_diagnose_run_dir_without_run_info(fitted: Diagnoser, fresh, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rftfm.cli import app

    root, runs, _ = fresh
    row = runs.filter(pl.col("fault_type") == "zero_variance").row(0, named=True)
    run_dir = tmp_path / row["group"] / row["run_id"]
    shutil.copytree(root / row["group"] / row["run_id"], run_dir)
    (run_dir / "run_info.json").unlink()
    for parquet in run_dir.glob("*.parquet"):
        parquet.unlink()
    model = fitted.save(tmp_path / "diag.json")
    out = CliRunner().invoke(app, ["diagnose", str(run_dir), "--model", str(model), "--step", "9"])
    assert out.exit_code == 0, out.output
    assert "zero_variance" in out.output and "evidence" in out.output
    as_json = CliRunner().invoke(app, ["diagnose", str(run_dir), "--model", str(model), "--step", "9", "--json"])
    assert json.loads(as_json.output)["ranked"][0]["fault_type"] == "zero_variance"


def test_summary_sentence_for_unknown_names_the_closest_type() -> None:
    assert summary_sentence(None, [], "lr_low").startswith("unknown fault")
    assert "closest known: lr_low" in summary_sentence(None, [], "lr_low")


def test_summary_sentence_on_a_runs_first_records_says_there_is_no_baseline_yet() -> None:
    first = summary_sentence("degeneration", [], records=1)
    assert first == "degeneration: 1 logged record, no baseline of the run's own yet"
    assert "no signal far from the run's own baseline" in summary_sentence("degeneration", [], records=12)


def test_a_configuration_in_other_units_is_diagnosed_alike(fitted: Diagnoser, fresh) -> None:
    """No normal profile of a configuration: the same dynamics in other units give the same diagnosis."""
    _, runs, features = fresh
    run_id = runs.filter(pl.col("fault_type") == "lr_low")["run_id"][0]
    scaled = features.with_columns(
        *[
            (pl.col(c) * 100.0).alias(c)
            for c in ("kl", "grad_norm", "completion_length_mean", "completion_length_max", "entropy")
        ]
    )
    a, b = fitted.diagnose(features, run_id, 9), fitted.diagnose(scaled, run_id, 9)
    assert [h.fault_type for h in a.ranked[:3]] == [h.fault_type for h in b.ranked[:3]]
    assert a.ranked[0].probability == pytest.approx(b.ranked[0].probability, abs=1e-6)


def test_packaged_default_artifact_loads_without_pickle(fresh) -> None:
    from rftfm.fm.diagnose import DEFAULT_ARTIFACT

    assert DEFAULT_ARTIFACT.stat().st_size < 2_000_000
    assert json.loads(DEFAULT_ARTIFACT.read_text())["format"] == "rftfm-diagnoser"
    diagnoser = Diagnoser.load_default()
    assert set(diagnoser.classes) <= set(FAULT_TYPES)
    _, runs, features = fresh
    d = diagnoser.diagnose(features, runs["run_id"][0], 8, task_group="arith_a", model_size="xs")
    assert len(d.ranked) == len(diagnoser.classes) and abs(sum(h.probability for h in d.ranked) - 1) < 1e-3
    assert all(h.family == FAULT_TYPES[h.fault_type].family for h in d.ranked)
    assert d.summary


def test_fold_detector_alarms_take_each_folds_own_first_alarm(bench) -> None:
    from rftfm.bench.eval_diagnosis import FoldDetectorAlarms

    _, runs, features = bench
    faulty = runs.filter(pl.col("control_or_fault") == "fault").head(3)
    a, b, c = faulty["run_id"].to_list()
    rows = [
        {"fold": "f1", "run_id": a, "first_alarm": 7, "detected": True},
        {"fold": "f2", "run_id": a, "first_alarm": 9, "detected": True},
        {"fold": "f1", "run_id": b, "first_alarm": 1, "detected": False},  # alarmed before onset: not a detection
    ]
    alarms = FoldDetectorAlarms({"methods": {"a": {"RFT-FM": {"runs": rows}}}})
    fallback = fallback_alarm_steps(faulty, features)
    steps, sources = alarms(faulty, features, "f1")
    assert steps == {a: 7, b: fallback[b], c: fallback[c]}
    assert sources == {a: "detector_tier_a", b: "fallback_no_alarm", c: "fallback_no_alarm"}
    assert alarms(faulty, features, "f2")[0][a] == 9
    with pytest.raises(ValueError, match="not in the detection result"):
        alarms(faulty, features, "f3")
    with pytest.raises(ValueError, match="no RFT-FM runs of tier 'bc'"):
        FoldDetectorAlarms({"methods": {"a": {}}}, "bc")


def test_a_live_run_diagnosed_at_every_step_gets_the_same_answers_as_from_scratch(
    fitted: Diagnoser, fresh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The diagnoser continues its tracker over a growing history (and starts again after a rewind): the same
    diagnoses as one that tracks each history from its first record, at a fraction of the tracking."""
    _, runs, features = fresh
    run_id = runs.filter(pl.col("fault_type") == "reward_hacking")["run_id"][0]
    history = features.filter(pl.col("run_id") == run_id)
    scratch = copy.deepcopy(fitted)
    tracked_records: list[int] = []
    extend = fitted.tracker.extend
    monkeypatch.setattr(fitted.tracker, "extend", lambda state, cube: tracked_records.append(cube.shape[1]) or
                        extend(state, cube))
    fitted._tracked.clear()
    steps = [*range(1, STEPS + 1), 4, 5, STEPS]  # a rollback to step 4, then forward again
    for step in steps:
        scratch._tracked.clear()
        seen = history.filter(pl.col("step") <= step)
        assert fitted.diagnose(seen, run_id, step).model_dump() == scratch.diagnose(seen, run_id, step).model_dump()
    # every step once, then the rewind from scratch (4 records), one more, and the rest again
    assert tracked_records == [1] * STEPS + [4, 1, STEPS - 5]


@pytest.mark.parametrize(("factor", "types"), [(30.0, {"lr_high", "numerical_blowup"}), (0.01, {"lr_low"})])
def test_a_learning_rate_jump_in_the_log_leaves_only_the_types_that_move_it_that_way(fresh, factor, types) -> None:
    _, _, features = fresh
    history = features.filter(pl.col("run_id") == "novel-1").with_columns(
        learning_rate=pl.when(pl.col("step") >= 7).then(1e-5 * factor).otherwise(1e-5)
    )
    d = Diagnoser.load_default().diagnose(history, "novel-1", 9)
    assert not d.unknown and {h.fault_type for h in d.ranked if h.probability > 0} <= types
    jump = d.evidence[0]
    assert jump.signal == "learning_rate" and jump.since_step == 6 and jump.ratio == pytest.approx(factor)
    without = Diagnoser.load_default().diagnose(history.drop("learning_rate"), "novel-1", 9)
    assert all(e.signal != "learning_rate" for e in without.evidence)


def test_completions_that_end_before_the_limit_rule_out_a_length_limit(fitted: Diagnoser) -> None:
    """A record whose truncated ratio is (about) 0: the length-limit types go, the others keep the model's
    proportions, and the row abstains when the best family left was below the abstention threshold."""
    from rftfm.fm.cube import CUBE_SIGNALS
    from rftfm.fm.diagnose import UNTRUNCATED, untruncated_now

    classes = fitted.classes
    limited = [t for t in classes if FAULT_TYPES[t].signals[0] == ("truncated_ratio", "up")]
    assert limited, "the fitted classes have a length-limit type"
    other = next(t for t in classes if t not in limited)
    prob = np.full((3, len(classes)), 0.0)
    for row in prob:
        row[classes.index(limited[0])], row[classes.index(other)] = 0.7, 0.3
    prob[2] = 0.0
    prob[2, classes.index(limited[0])], prob[2, classes.index(other)] = 0.999, 0.001
    unknown = np.zeros(3, dtype=bool)
    out, abstain = fitted.apply_untruncated(prob, unknown, [True, False, True])
    assert out[0, classes.index(limited[0])] == 0.0 and out[0, classes.index(other)] == pytest.approx(1.0)
    np.testing.assert_array_equal(out[1], prob[1])  # truncated completions: as the model said
    assert not abstain[1]
    assert abstain[2] == (0.001 < fitted.family_threshold)  # hardly anything left: abstains, as the model would
    assert abstain[0] == (0.3 < fitted.family_threshold)

    raw = np.full((3, len(CUBE_SIGNALS)), np.nan)
    steps = np.array([1, 2, 0])
    truncated = CUBE_SIGNALS.index("truncated_ratio")
    assert not untruncated_now(raw, steps)  # never logged: no reading
    raw[1, truncated] = UNTRUNCATED
    assert untruncated_now(raw, steps)
    raw[1, truncated] = 0.2
    raw[2, truncated] = 0.0  # (a row past the run's end does not count)
    assert not untruncated_now(raw, steps)


def test_a_run_without_a_kl_term_is_never_given_a_kl_coefficient_fault() -> None:
    """TRL logs no KL with beta = 0: the types that need a KL term go (the others keep the model's proportions); a
    run that logged a KL once keeps them."""
    from rftfm.fm.cube import CUBE_SIGNALS
    from rftfm.fm.diagnose import without_kl

    fitted = Diagnoser.load_default()
    classes = fitted.classes
    kl_types = [t for t in classes if FAULT_TYPES[t].needs_kl]
    assert kl_types, "the fitted classes have a KL-coefficient type"
    other = next(t for t in classes if not FAULT_TYPES[t].needs_kl)
    prob = np.zeros((2, len(classes)))
    prob[:, classes.index(kl_types[0])], prob[:, classes.index(other)] = 0.6, 0.4
    out, _ = fitted.apply_without_kl(prob, np.zeros(2, dtype=bool), [True, False])
    assert out[0, classes.index(kl_types[0])] == 0.0 and out[0, classes.index(other)] == pytest.approx(1.0)
    np.testing.assert_array_equal(out[1], prob[1])

    raw = np.full((3, len(CUBE_SIGNALS)), np.nan)
    steps = np.array([1, 2, 3])
    assert without_kl(raw, steps) and not without_kl(raw, np.zeros(3, dtype=int))  # no record: no reading
    raw[0, CUBE_SIGNALS.index("kl")] = 0.0  # a KL of 0 at the first step is a KL term
    assert not without_kl(raw, steps)


def test_a_loss_lifted_by_a_penalty_or_out_of_its_scale_ranks_the_types_that_lift_it_first() -> None:
    """The types that add a penalty to the loss get half the mass where the loss-penalty statistic is above the
    diagnoser's bar (only the named term's, where one is named); with no term named, a loss out of its scale gives
    it to every type that lifts the loss; rows below the bars, or not judged, are as they were; the no-KL rule still
    removes a KL coefficient."""
    from rftfm.fm import loss_penalty
    from rftfm.fm.cube import CUBE_SIGNALS
    from rftfm.fm.diagnose import PENALTY_WINDOW, Seen, penalty_now

    fitted = Diagnoser.load_default()
    classes = fitted.classes
    fitted.penalty_bar, saved = 5.0, fitted.penalty_bar
    try:
        prob = np.zeros((3, len(classes)))
        prob[:, classes.index("lr_high")], prob[:, classes.index("entropy_collapse")] = 0.8, 0.2
        out, unknown = fitted.apply_penalty(prob, np.ones(3, dtype=bool), [9.0, 4.0, math.nan])
        assert out[0, classes.index("entropy_collapse")] == pytest.approx(0.2 / 2 + 0.5) and not unknown[0]
        np.testing.assert_array_equal(out[1:], prob[1:])
        seen = Seen([], 0.0, None, [], [], False, False, True, 9.0)  # a run that logs no KL
        ruled, _ = fitted.apply_seen(prob[:1].copy(), np.zeros(1, dtype=bool), [seen])
        assert ruled[0, classes.index("kl_misconfig")] == 0.0 and ruled[0].argmax() == classes.index("entropy_collapse")
    finally:
        fitted.penalty_bar = saved

    with_term = fitted.apply_penalty(prob[:1], np.ones(1, dtype=bool), [float("inf")], ["kl"])[0][0]
    assert with_term.argmax() == classes.index("kl_misconfig") and with_term[classes.index("entropy_collapse")] == 0.1

    # a loss that left its scale with no term named: every type that lifts the loss (a penalty, or advantages that
    # no longer sum to 0 / were scaled up) shares the half, in the model's proportions; below the bar, as it was
    from rftfm.faults.taxonomy import FAULT_TYPES

    lifts = [t for t in classes if FAULT_TYPES[t].lifts_loss]
    assert {"advantage_sign", "advantage_normalization", "entropy_collapse"} <= set(lifts)
    prob[:, classes.index("advantage_sign")], prob[:, classes.index("entropy_collapse")] = 0.15, 0.05
    fitted.scale_bar, saved = 1.0, fitted.scale_bar
    try:
        scaled, unknown = fitted.apply_penalty(
            prob, np.ones(3, dtype=bool), [math.nan] * 3, [None, None, "entropy"], [2.0, 0.5, math.nan]
        )
    finally:
        fitted.scale_bar = saved
    assert scaled[0, classes.index("advantage_sign")] == pytest.approx(0.15 / 2 + 0.5 * 0.15 / 0.2) and not unknown[0]
    assert scaled[0].argmax() == classes.index("advantage_sign") and scaled[0, classes.index("lr_high")] == 0.4
    np.testing.assert_array_equal(scaled[1:], prob[1:])  # below the bar; a term named but no penalty read

    raw = np.full((16, len(CUBE_SIGNALS)), np.nan)
    raw[:, CUBE_SIGNALS.index("entropy")] = 0.5
    raw[:, CUBE_SIGNALS.index("policy_loss")] = [0.0, 0.001] * 6 + [0.25] * 4
    steps = np.arange(1, 17)
    expected = loss_penalty.cube_stats(raw[None], steps[None], PENALTY_WINDOW)[0][-loss_penalty.WINDOW :].max()
    assert penalty_now(raw, steps) == pytest.approx(expected) and expected > 10
    assert math.isnan(penalty_now(raw[:5], steps[:5]))  # no reference yet
    # two records into the penalty the diagnoser reads it (the detector's window of 4 does not yet)
    detector_window = loss_penalty.cube_stats(raw[None, :14], steps[None, :14])[0, -1]
    assert penalty_now(raw[:14], steps[:14]) > 10 and detector_window < 2


def test_a_kl_coefficient_that_moved_ranks_the_types_that_move_it_that_way_first() -> None:
    """Beyond one unit down (the loss no longer carries the configured beta), the KL coefficient dropping out of the
    loss gets half the mass; up, a KL coefficient pushed up; within a unit, or not judged, the row is as it was. The
    rule reads the run's last records as the detector's channel does."""
    from rftfm.faults.taxonomy import FAULT_TYPES
    from rftfm.fm import kl_coefficient
    from rftfm.fm.cube import CUBE_SIGNALS
    from rftfm.fm.diagnose import Seen, describe

    assert FAULT_TYPES["kl_dropped"].kl_coefficient_move == "down"
    assert FAULT_TYPES["kl_misconfig"].kl_coefficient_move == "up"
    assert FAULT_TYPES["lr_high"].kl_coefficient_move is None
    fitted = Diagnoser.load_default()
    classes = fitted.classes
    prob = np.zeros((4, len(classes)))
    prob[:, classes.index("lr_high")], prob[:, classes.index("kl_misconfig")] = 0.9, 0.1
    out, unknown = fitted.apply_kl_coefficient(prob, np.ones(4, dtype=bool), [-4.6, 2.0, 0.5, math.nan])
    assert out[0, classes.index("kl_dropped")] == pytest.approx(0.5) and out[0].argmax() == classes.index("kl_dropped")
    assert out[1, classes.index("kl_misconfig")] == pytest.approx(0.05 + 0.5) and not unknown[:2].any()
    np.testing.assert_array_equal(out[2:], prob[2:])
    assert unknown[2:].all()

    raw = np.full((20, len(CUBE_SIGNALS)), np.nan)
    kl = np.geomspace(0.001, 0.02, 20)
    raw[:, CUBE_SIGNALS.index("kl")] = kl
    raw[:, CUBE_SIGNALS.index("policy_loss")] = 0.04 * kl * np.where(np.arange(20) >= 14, 0.01, 1.0)
    steps = np.arange(1, 21)
    seen = Seen.read(raw, steps, np.full(20, np.nan), [], False)
    assert seen.coefficient == pytest.approx(math.log(0.01)) == kl_coefficient.reading(raw, steps)[0]
    e = seen.coefficient_evidence
    assert e is not None and e.per_kl and e.direction == "down" and e.since_step == 15  # the onset: the window began
    assert e.value == pytest.approx(0.0004) and e.expected == pytest.approx(0.04)
    assert "fell 1e+02-fold" in describe(e)
    assert math.isnan(kl_coefficient.reading(raw[:5], steps[:5])[0])  # no reference yet: nothing judged
    assert kl_coefficient.reading(raw[:14], steps[:14])[1] is None  # judged, no change: no evidence


def test_in_the_trainer_the_diagnosis_reads_the_handed_over_invariants_and_the_clip_ratio(bench) -> None:
    from rftfm.bench.eval_detection import IN_TRAINER as IN_TRAINER_METHOD
    from rftfm.bench.eval_diagnosis import IN_TRAINER, FoldDetectorAlarms, _seen_at_alarm, tier_signals

    rows = [
        {"run_id": r, "step": s, "reward_mean": 0.4, "reward_std": 0.3, "kl": 0.01, "entropy": 1.0, "grad_norm": 1.0,
         "clip_ratio_region": 0.03 if r == "stale" and s >= 9 else 0.0,
         "traj_advantage_residual": 1.0 if r == "flipped" and s >= 2 else 0.0, "traj_advantage_zeroed": 0.0}
        for r in ("stale", "flipped") for s in range(1, 12)
    ]
    history, alarms = pl.DataFrame(rows), {"stale": 11, "flipped": 11}
    log_alone = _seen_at_alarm(history, alarms, ["stale", "flipped"])
    trainer = _seen_at_alarm(history, alarms, ["stale", "flipped"], in_trainer=True)
    assert [s.broken for s in log_alone] == [[], []]  # not on-policy as far as a log says; never held: not armed
    assert [s.broken for s in trainer] == [["clip_ratio_region"], ["traj_advantage_residual"]]
    handed_over = {"traj_advantage_residual", "traj_advantage_zeroed", "unscored_share", "repeat_reward_disagreements"}
    assert set(tier_signals(IN_TRAINER)) == set(tier_signals("a")) | handed_over
    _, runs, features = bench
    run_id = runs.filter(pl.col("control_or_fault") == "fault")["run_id"][0]
    detection = {"methods": {"a": {IN_TRAINER_METHOD: {"runs": [
        {"fold": "f1", "run_id": run_id, "first_alarm": 7, "detected": True}]}}}}
    steps, sources = FoldDetectorAlarms(detection, "a", IN_TRAINER_METHOD)(runs.filter(pl.col("run_id") == run_id),
                                                                           features, "f1")
    assert steps == {run_id: 7} and sources == {run_id: "detector_tier_a_trainer"}
