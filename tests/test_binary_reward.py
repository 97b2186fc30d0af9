"""The binary-reward rule: a reward function whose scores were all 0 or 1 (its logged sd is then fixed by its mean)
stops being so -- noise, a scale, completions left unscored -- and the detector and diagnoser see it at that record."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from detector_fixtures import stream
from typer.testing import CliRunner

from rftfm.cli import app
from rftfm.cli.watch import EXIT_ALARM, EXIT_OK
from rftfm.fm import binary_reward as br
from rftfm.fm.detect import Detector
from rftfm.fm.diagnose import Diagnoser
from rftfm.fm.features import features_frame


def _scores(steps: int = 30, n: int = 32, noise_from: int | None = None, noise: float = 0.5,
            unscored_from: int | None = None, seed: int = 3) -> list[np.ndarray]:
    """Each step's verifier scores: 0 / 1 with a slowly rising success rate; Gaussian noise added from
    ``noise_from``, a third of the completions left unscored (TRL leaves them out) from ``unscored_from``."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(1, steps + 1):
        scores = (rng.random(n) < 0.3 + 0.01 * s).astype(float)
        if noise_from is not None and s >= noise_from:
            scores = scores + rng.normal(0.0, noise, n)
        if unscored_from is not None and s >= unscored_from:
            scores = scores[: 2 * n // 3]
        out.append(scores)
    return out


def _mean_sd(scores: np.ndarray) -> tuple[float, float]:
    return float(scores.mean()), float(scores.std(ddof=1))  # TRL's nanstd: Bessel-corrected


def _advance_all(state: br.BinaryState, runs: list[np.ndarray], start: int = 1, every: int = 1) -> list[float]:
    units = []
    for k, scores in enumerate(runs):
        m, sd = _mean_sd(scores)
        units.append(state.advance((m,), (sd,), None, None, start + every * k))
    return units


def test_scores_of_0_or_1_fix_the_sd_by_the_mean_and_noise_breaks_it_at_its_first_record():
    state = br.BinaryState()
    units = _advance_all(state, _scores(noise_from=15))
    assert state.functions[0].q is not None and math.isclose(state.functions[0].q, 32 / 31, rel_tol=1e-9)
    assert max(units[:14]) < 1e-6 and units[14] > 100  # step 15
    e = state.evidence()
    assert e.since_step == 15 and e.value > e.expected and e.direction == "up" and e.binary_mean is not None
    assert "scores of 0 or 1" in br.describe(e) and "since step 15" in br.describe(e)


def test_completions_left_unscored_or_scores_out_of_0_1_break_it():
    state = br.BinaryState()
    assert _advance_all(state, _scores(unscored_from=12))[11] > 1.0  # n 32 -> 21: q 32/31 -> 21/20
    scaled = br.BinaryState()
    runs = _scores()
    units = _advance_all(scaled, runs[:10]) + _advance_all(scaled, [5 * r + 1 for r in runs[10:]], start=11)
    assert max(units[:10]) < 1e-6 and units[10] > 1000  # a mean of 2.6: not scores of 0 or 1


def test_it_never_arms_on_scores_that_are_not_0_or_1_nor_on_equal_means_nor_on_averaged_records():
    partial = br.BinaryState()  # partial credit: 0, 0.5 or 1
    rng = np.random.default_rng(0)
    for s in range(1, 20):
        m, sd = _mean_sd(rng.choice([0.0, 0.5, 1.0], 32))
        partial.advance((m,), (sd,), None, None, s)
    assert partial.functions[0].disarmed
    equal = br.BinaryState()  # one success in 64 at every record: q agrees whatever the scores are
    scores = np.r_[1.0, np.zeros(63)]
    for s in range(1, 10):
        equal.advance(_mean_sd(scores)[:1], _mean_sd(scores)[1:], None, None, s)
    assert equal.functions[0].disarmed
    averaged = br.BinaryState()  # logging_steps 2: a record two steps after the last is never judged
    assert max(_advance_all(averaged, _scores(noise_from=15), start=2, every=2)) == 0.0
    assert averaged.functions == []


def test_a_log_without_per_function_keys_is_judged_on_its_reward_and_a_record_that_changes_mode_is_not():
    state = br.BinaryState()
    for k, scores in enumerate(_scores(noise_from=15)[:16], start=1):
        m, sd = _mean_sd(scores)
        units = state.advance(None, None, m, sd, k)
    assert state.per_function is False and units > 100
    mixed = br.BinaryState()
    _advance_all(mixed, _scores()[:10])
    assert mixed.advance(None, None, 3.0, 0.1, 11) == 0.0  # the functions' keys missing from one record


def _rows(noise_from: int | None) -> list[dict]:
    rng = np.random.default_rng(7)
    rows = []
    for s, scores in enumerate(_scores(steps=36, noise_from=noise_from, noise=0.35), start=1):
        m, sd = _mean_sd(scores)
        rows.append({
            "run_id": "bin", "step": s, "reward_mean": m, "reward_std": sd,
            "kl": 0.002 * s * float(np.exp(rng.normal(0, 0.1))), "entropy": 0.9 - 0.003 * s + rng.normal(0, 0.01),
            "policy_loss": rng.normal(0, 0.01), "grad_norm": float(np.exp(rng.normal(0, 0.2))),
            "completion_length_mean": 40 * float(np.exp(rng.normal(0, 0.03))),
            "extra": {"rewards/accuracy/mean": m, "rewards/accuracy/std": sd},
        })
    return rows


def test_the_offline_channel_gives_the_live_units():
    rows = _rows(noise_from=20)
    state = br.BinaryState()
    live = [state.advance((r["reward_mean"],), br.spreads_of(r["extra"]), r["reward_mean"], r["reward_std"], r["step"])
            for r in rows]
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in rows]
    features = features_frame(pl.DataFrame(flat), None)
    np.testing.assert_allclose(br.runs_units(features, ["bin"], 36)[0], live)
    assert live[19] > 1.0 and max(live[:19]) < 1e-6
    assert br.run_evidence(features, "bin", 20).since_step == 20 and br.run_evidence(features, "bin", 19) is None


def test_the_shipped_detector_alarms_at_the_first_noisy_record_and_the_diagnoser_names_a_reward_fault():
    detector = Detector.load_default()
    _, alarms = stream(detector, _rows(noise_from=None))
    assert not alarms
    _, alarms = stream(detector, _rows(noise_from=20))
    assert alarms and alarms[0].step == 20 and alarms[0].evidence[0].binary_mean is not None
    flat = [{k: v for k, v in r.items() if k != "extra"} | {f"extra.{k}": v for k, v in r["extra"].items()}
            for r in _rows(noise_from=20)]
    diagnosis = Diagnoser.load_default().diagnose(features_frame(pl.DataFrame(flat), None), "bin", 20)
    assert diagnosis.top is not None and diagnosis.top.fault_type in ("reward_noise", "reward_scale", "reward_none")
    assert diagnosis.evidence[0].binary_mean is not None


def test_watching_a_trl_log_whose_verifier_turns_noisy_alarms_at_that_step(tmp_path):
    def log(noise_from: int | None):
        path = tmp_path / f"run-{noise_from}.jsonl"
        path.write_text("".join(
            json.dumps({"step": r["step"], "loss": r["policy_loss"], "grad_norm": r["grad_norm"],
                        "learning_rate": 1e-6, "completions/mean_length": r["completion_length_mean"],
                        "reward": r["reward_mean"], "reward_std": r["reward_std"], "kl": r["kl"],
                        "entropy": r["entropy"], **r["extra"]}) + "\n"
            for r in _rows(noise_from)
        ))
        return path

    runner = CliRunner()
    healthy = runner.invoke(app, ["watch", str(log(None)), "--format", "trl"])
    assert healthy.exit_code == EXIT_OK, healthy.output
    summary = tmp_path / "summary.json"
    noisy = runner.invoke(app, ["watch", str(log(20)), "--format", "trl", "--json", str(summary)])
    assert noisy.exit_code == EXIT_ALARM, noisy.output
    assert json.loads(summary.read_text())["episodes"][0]["start_step"] == 20
    assert "no longer 0 or 1" in " ".join(noisy.output.split())
