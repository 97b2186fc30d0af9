"""The watcher on a user's own TRL run it has never seen (rftfm.testing.user_run: a plain GRPOTrainer on a tiny
Llama counting letters -- a model family, size and task the benchmark does not contain), logged with
JsonlLogCallback and read back with ``rftfm watch --format trl``: quiet on the healthy run, and an alarm
within 3 steps of a mid-run learning-rate spike; at TRL's GRPOConfig defaults (a record every 10 steps, the
learning rate decaying linearly), quiet too, and an alarm at the first record that holds a spiked step or the
one after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rftfm.cli import app
from rftfm.testing import user_run as ur

STEPS, ONSET = 60, 30


TRL_DEFAULTS = ur.TRL_DEFAULT_LOGGING


def _logged_run(tmp: Path, name: str, spike: ur.LRSpike | None, **config) -> Path:
    log = tmp / f"{name}.jsonl"
    torch.set_num_threads(1)
    ur.user_trainer(tmp / name, steps=STEPS, seed=0, spike=spike, log_path=log, **config).train()
    return log


def _watch(log: Path, tmp: Path) -> dict:
    summary = tmp / f"{log.stem}.summary.json"
    result = CliRunner().invoke(app, ["watch", str(log), "--format", "trl", "--quiet", "--json", str(summary)])
    assert result.exit_code in (0, 1), result.output
    return json.loads(summary.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("user-runs")
    return {
        "healthy": _watch(_logged_run(tmp, "healthy", None), tmp),
        "spike": _watch(_logged_run(tmp, "spike", ur.LRSpike(onset=ONSET, factor=30.0)), tmp),
    }


def test_a_healthy_user_run_raises_no_alarm(runs):
    healthy = runs["healthy"]
    assert healthy["steps"] == STEPS
    assert healthy["alarms"] == 0, healthy["episodes"]


def test_a_mid_run_learning_rate_spike_is_caught_within_three_steps(runs):
    spike = runs["spike"]
    assert spike["first_alarm_step"] is not None, "the spike was not detected"
    assert ONSET <= spike["first_alarm_step"] <= ONSET + 3, spike["episodes"]


@pytest.fixture(scope="module")
def runs_at_trl_defaults(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("user-runs-trl-defaults")
    return {
        "healthy": _watch(_logged_run(tmp, "healthy", None, **TRL_DEFAULTS), tmp),
        "spike": _watch(_logged_run(tmp, "spike", ur.LRSpike(onset=ONSET, factor=30.0), **TRL_DEFAULTS), tmp),
    }


@pytest.mark.slow
def test_at_trls_defaults_a_healthy_user_run_raises_no_alarm(runs_at_trl_defaults):
    healthy = runs_at_trl_defaults["healthy"]
    assert healthy["steps"] == STEPS // TRL_DEFAULTS["logging_steps"]  # the records it read
    assert healthy["alarms"] == 0, healthy["episodes"]


@pytest.mark.slow
def test_at_trls_defaults_a_spike_is_caught_at_the_first_record_after_it(runs_at_trl_defaults):
    spike = runs_at_trl_defaults["spike"]
    assert spike["first_alarm_step"] is not None, "the spike was not detected"
    assert ONSET <= spike["first_alarm_step"] <= ONSET + TRL_DEFAULTS["logging_steps"], spike["episodes"]
