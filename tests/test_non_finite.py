"""The non-finite channel: a loss, grad norm, KL or entropy the run logged finite that turns NaN alarms at once and
is diagnosed a numerical blow-up; a signal the run never logs, its first records and a record without a reward
do not."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from detector_fixtures import stream

from rftfm.fm import non_finite
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.detect import Detector, describe
from rftfm.fm.diagnose import Diagnoser
from rftfm.fm.features import FEATURES

GRAD = non_finite.SIGNALS.index("grad_norm")


def _raw(**values: float) -> np.ndarray:
    row = np.full(len(CUBE_SIGNALS), np.nan)
    for name, value in values.items():
        row[CUBE_SIGNALS.index(name)] = value
    return row


def _records(grad: list[float | None], reward: list[float | None] | None = None) -> list[np.ndarray]:
    reward = reward or [0.5] * len(grad)
    return [_raw(**{k: v for k, v in (("grad_norm", g), ("reward_mean", r)) if v is not None})
            for g, r in zip(grad, reward)]


def test_a_signal_logged_finite_warmup_times_is_lost_where_training_records_miss_it_in_a_row_and_the_cube_agrees():
    grad = [1.0, 1.2, None, 0.9, None, None, 1.1, None, None, 0.8, None]
    reward = [0.5] * 5 + [None] + [0.5] * 5  # the 6th record has no reward: an eval record, say
    state, lost = non_finite.LostState(), []
    for step, raw in enumerate(_records(grad, reward), start=1):
        lost.append(bool(state.advance(raw, step)[GRAD]))
    # armed after 3 finite values (steps 1, 2, 4): step 3 is too early; step 5 is one missing record (an fp16 loss
    # scaler's skipped step looks like that), step 6 no training record, step 7 finite again; steps 8 and 9 in a row
    assert lost == [False] * 8 + [True, False, False]
    cube = np.stack(_records(grad, reward))[None]
    steps = np.arange(1, len(grad) + 1)[None]
    np.testing.assert_array_equal(non_finite.cube_lost(cube, steps)[0, :, GRAD], lost)
    assert non_finite.lost_now(cube[0, :9], steps[0, :9]) == ["grad_norm"]
    assert not non_finite.lost_now(cube[0, :8], steps[0, :8])
    assert not non_finite.lost_now(cube[0], steps[0])
    (e,) = non_finite.run_evidence(cube[0, :9], steps[0, :9], ["grad_norm"])
    assert e.non_finite and e.expected == pytest.approx(1.1) and e.since_step == 8
    assert describe(e) == "grad norm not finite (last 1.1) since step 8"


def test_a_signal_missing_from_the_last_record_once_it_was_ever_finite_is_a_sign():
    grad = [1.0, None, 0.9, None, 1.1]
    cube = np.stack(_records(grad))
    steps = np.arange(1, len(grad) + 1)
    assert not non_finite.lost_now(cube[:2], steps[:2])  # the detector's rule: one finite value, one record missing
    assert non_finite.missing_now(cube[:2], steps[:2]) == ["grad_norm"]
    assert non_finite.missing_now(cube[:4], steps[:4]) == ["grad_norm"]
    assert not non_finite.missing_now(cube, steps)  # finite again at the last record: an fp16 scaler's skip
    assert not non_finite.missing_now(cube[:1], steps[:1])
    never = np.stack(_records([None, None, None]))
    assert not non_finite.missing_now(never, np.arange(1, 4))  # never logged: nothing lost


def test_a_signal_the_run_never_logs_is_never_lost():
    state = non_finite.LostState()
    assert not any(state.advance(raw, s).any() for s, raw in enumerate(_records([None] * 10), start=1))


def _trl_rows(nan_from: int | None, steps: int = 30) -> list[dict]:
    """A plain TRL-like run (step metrics only) whose grad norm, KL and entropy turn NaN from ``nan_from``."""
    rng = np.random.default_rng(3)
    rows = []
    for s in range(1, steps + 1):
        broken = nan_from is not None and s >= nan_from
        rows.append({
            "run_id": "blowup", "step": s,
            "reward_mean": float(np.clip(0.3 + 0.005 * s + rng.normal(0, 0.03), 0, 1)),
            "reward_std": 0.45 + rng.normal(0, 0.01),
            "kl": None if broken else 0.002 * s * float(np.exp(rng.normal(0, 0.1))),
            "entropy": None if broken else 0.9 - 0.003 * s + rng.normal(0, 0.01),
            "policy_loss": rng.normal(0, 0.01),
            "grad_norm": None if broken else float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 40 * float(np.exp(rng.normal(0, 0.03))),
        })
    return rows


def test_the_shipped_detector_alarms_at_the_second_nan_in_a_row_with_them_as_evidence_and_a_rollback_forgets_it():
    detector = Detector.load_default()
    rows = _trl_rows(nan_from=20)
    scores, alarms = stream(detector, rows)
    assert alarms and alarms[0].step == 21 and scores[20] >= non_finite.UNITS  # the second record in a row without them
    lost = [e for e in alarms[0].evidence if e.non_finite]
    assert {e.signal for e in lost} == {"kl", "entropy", "grad_norm"} and all(e.since_step == 20 for e in lost)
    assert alarms[0].evidence[0].non_finite  # named first: it alone is enough
    from rftfm.records import StepRecord

    detector.observe(StepRecord(**_trl_rows(nan_from=None)[18]))  # rolled back to step 19, its numbers finite again
    assert detector.last_score < non_finite.UNITS


def test_one_skipped_fp16_step_in_a_healthy_run_is_no_alarm():
    rows = _trl_rows(nan_from=None)
    rows[15]["grad_norm"] = None  # the loss scaler overflowed once: an infinite grad norm, the step skipped
    scores, alarms = stream(Detector.load_default(), rows)
    assert not alarms and max(scores) < 1.0


def test_the_shipped_diagnoser_names_a_numerical_blowup_from_the_lost_signals():
    rows = _trl_rows(nan_from=20)
    frame = pl.DataFrame(rows).with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(f) for f in FEATURES if f not in rows[0]]
    ).select("run_id", "step", *FEATURES)
    diagnosis = Diagnoser.load_default().diagnose(frame, "blowup", 22)
    assert not diagnosis.unknown and diagnosis.ranked[0].fault_type == "numerical_blowup"
    assert diagnosis.ranked[0].probability == pytest.approx(1.0)
    assert diagnosis.evidence[0].non_finite and "not finite" in diagnosis.summary


def test_at_the_first_nan_record_the_diagnoser_ranks_a_blowup_first_but_short_of_a_halts_certainty():
    from rftfm.fm.policy import ControllerConfig

    rows = _trl_rows(nan_from=20)
    frame = pl.DataFrame(rows).with_columns(
        *[pl.lit(None, dtype=pl.Float64).alias(f) for f in FEATURES if f not in rows[0]]
    ).select("run_id", "step", *FEATURES)
    diagnoser = Diagnoser.load_default()
    before = diagnoser.diagnose(frame, "blowup", 19)
    model_p = next(h.probability for h in before.ranked if h.fault_type == "numerical_blowup")
    diagnosis = diagnoser.diagnose(frame, "blowup", 20)  # one record without its numbers: a sign, not proof
    top = diagnosis.ranked[0]
    assert top.fault_type == "numerical_blowup" and not diagnosis.unknown
    assert 0.5 <= top.probability < ControllerConfig().halt_confidence
    assert diagnosis.evidence[0].non_finite and diagnosis.evidence[0].since_step == 20
    assert model_p < 0.5  # before the NaN, the model gave it under half


def test_watching_a_trl_log_whose_grad_norm_turns_nan_alarms_and_diagnoses_a_blowup(tmp_path):
    from typer.testing import CliRunner

    from rftfm.cli import app
    from rftfm.cli.watch import EXIT_ALARM

    lines = []
    for r in _trl_rows(nan_from=25, steps=40):
        entry = {"loss": r["policy_loss"], "grad_norm": r["grad_norm"], "learning_rate": 1e-6,
                 "completions/mean_length": r["completion_length_mean"], "reward": r["reward_mean"],
                 "reward_std": r["reward_std"], "kl": r["kl"], "entropy": r["entropy"], "step": r["step"]}
        lines.append(json.dumps({k: (math.nan if v is None else float(v)) for k, v in entry.items()}))  # NaN as TRL
    log = tmp_path / "run.jsonl"
    log.write_text("\n".join(lines) + "\n")
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["watch", str(log), "--format", "trl", "--json", str(summary)])
    assert result.exit_code == EXIT_ALARM, result.output
    (episode,) = json.loads(summary.read_text())["episodes"]
    assert episode["start_step"] == 26
    assert "numerical_blowup" in " ".join(result.output.split())


def test_the_loop_with_the_shipped_artifacts_halts_a_run_whose_numbers_turn_nan():
    import torch
    from transformers import TrainerControl

    from rftfm.fm.handle import TrainerHandle
    from rftfm.fm.loop import Controller
    from rftfm.fm.policy import ControllerConfig
    from rftfm.records import StepRecord

    model = torch.nn.Linear(3, 2)
    controller = Controller(Detector.load_default(), Diagnoser.load_default(), run_id="blowup",
                            config=ControllerConfig(checkpoint_every=2))
    controller.start(TrainerHandle(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                   control=TrainerControl()), max_steps=30)
    for row in _trl_rows(nan_from=20):
        controller.observe(StepRecord(**row), [])
        if controller.mode == "halted":
            break
    assert controller.mode == "halted" and row["step"] == 21
    kinds = [e["payload"]["kind"] for e in controller.store.events(kind="action")]
    assert kinds[-2:] == ["rollback", "halt"]
    assert "numerical_blowup" in json.dumps(controller.store.events(kind="diagnosis")[-1])
