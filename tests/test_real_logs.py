"""Real logs of real TRL and verl runs (../shared/real-logs/): parsed with the step counts of their README,
their metrics mapped from the right keys, through ``--format auto`` too; watched and reported end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftfm.cli import app
from rftfm.io.adapters import read_log

REAL_LOGS = Path(__file__).resolve().parents[1].parent / "shared" / "real-logs"
pytestmark = pytest.mark.skipif(
    not REAL_LOGS.is_dir(), reason=f"the real logs are not beside the repository ({REAL_LOGS})"
)

#: file -> (steps, first step, last step, what --format auto says it is, field -> source key)
EXPECTED: dict[str, tuple[int, int, int, str, dict[str, str]]] = {
    "trl/IITD_AAIPL_outputs": (
        50,
        10,
        500,
        "TRL trainer_state.json (checkpoint-500)",
        {
            "reward_mean": "reward",
            "truncated_ratio": "completions/clipped_ratio",
            "frac_zero_std_groups": "frac_reward_zero_std",
            "completion_length_mean": "completions/mean_length",
            "entropy": "entropy",
            "policy_loss": "loss",
        },
    ),
    "trl/IITD_AAIPL_outputs/checkpoint-100/trainer_state.json": (
        10,
        10,
        100,
        "TRL trainer_state.json",
        {"reward_mean": "reward"},
    ),
    "trl/trl_DAPO_20251022_120531_run_terminal.md": (
        49,
        10,
        490,
        "TRL console output",
        {
            "reward_mean": "reward",
            "completion_length_mean": "completions/mean_length",
            "frac_zero_std_groups": "frac_reward_zero_std",
            "clip_ratio_region": "clip_ratio/region_mean",
        },
    ),
    "verl/aopd_i80f2v90.output.log": (
        261,
        1,
        261,
        "verl console log",
        {
            "reward_mean": "critic/score/mean",
            "kl": "actor/reward_kl_penalty",
            "entropy": "actor/entropy",
            "completion_length_mean": "response_length/mean",
            "clip_ratio_region": "actor/pg_clipfrac",
        },
    ),
    "verl/aopd_ry3hgbx5.output.log": (
        179,
        1,
        179,
        "verl console log",
        {"reward_mean": "critic/score/mean", "kl": "actor/reward_kl_penalty", "entropy": "actor/entropy"},
    ),
    "verl/dstack_verl_demo.log": (
        335,
        101,
        435,
        "verl console log",
        {
            "reward_mean": "critic/score/mean",
            "entropy": "actor/entropy_loss",
            "truncated_ratio": "response_length/clip_ratio",
            "eval_accuracy": "val-core/openai/gsm8k/reward/mean@1",
            "clip_ratio_region": "actor/pg_clipfrac",
        },
    ),
    "verl/verl_docs_quickstart.rst": (
        2,
        0,
        1,
        "verl console log",
        {"reward_mean": "critic/score/mean", "entropy": "actor/entropy_loss", "kl": "actor/reward_kl_penalty"},
    ),
}
SFT = "verl/aopd_dq9a4cex.sft.output.log"


def test_every_real_log_is_covered():
    files = {p.relative_to(REAL_LOGS).as_posix() for p in REAL_LOGS.rglob("*") if p.is_file() and p.name != "README.md"}
    covered = {f for f in files if f in EXPECTED or f == SFT or f.startswith("trl/IITD_AAIPL_outputs/")}
    assert covered == files


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_log_steps_and_mapping(name: str):
    steps, first, last, container, sources = EXPECTED[name]
    events, stats = read_log(REAL_LOGS / name)
    assert len(events) == steps and events[0][0].step == first and events[-1][0].step == last
    assert stats.described.startswith(container), stats.described
    for field, key in sources.items():
        assert stats.fields[field]["source"] == key, (field, stats.fields[field])
    assert stats.malformed_lines == 0 and stats.out_of_order == 0


def test_the_collapse_in_aopd_i80f2v90_is_in_the_mapped_signals():
    """README: score -0.68 -> -1.0, length 1759 -> 1 token, entropy 0.21 -> 0.007, KL penalty 0.83 -> 16.9
    over steps 3-12."""
    events, stats = read_log(REAL_LOGS / "verl/aopd_i80f2v90.output.log")
    by_step = {s.step: s for s, _ in events}
    assert by_step[1].reward_mean == pytest.approx(-0.676, abs=1e-3) and by_step[
        1
    ].completion_length_mean == pytest.approx(1759.1, abs=0.1)
    assert by_step[1].kl == pytest.approx(0.828, abs=1e-3) and by_step[1].entropy == pytest.approx(0.212, abs=1e-3)
    late = by_step[12]
    assert late.reward_mean == pytest.approx(-1.0, abs=0.02) and late.completion_length_mean < 5
    assert late.entropy < 0.02 and late.kl > 15
    assert "actor/ppo_kl" in late.extra  # the PPO step's KL is not the reference KL: kept, not mapped
    # W&B's output.log keeps 4,096 characters of a line: the validation steps lose their last keys, and it says so
    assert stats.cut_lines == 27
    assert "reward_mean missing at 26 of 261 steps (key `critic/score/mean`)" in stats.metric_problems


def test_trl_console_steps_come_from_the_progress_bar():
    events, _ = read_log(REAL_LOGS / "trl/trl_DAPO_20251022_120531_run_terminal.md")
    assert [s.step for s, _ in events[:3]] == [10, 20, 30]
    assert events[0][0].completion_length_mean == pytest.approx(53.35) and events[1][
        0
    ].completion_length_mean == pytest.approx(2.6)
    assert events[1][0].frac_zero_std_groups == 1.0
    assert {"rewards/mc_idx_reward/mean", "rewards/think_format_reward/mean", "rewards/mdi_reward/mean"} <= set(
        events[0][0].extra
    )


def _watch(args: list[str], tmp_path: Path, monkeypatch) -> tuple[int, str, dict | None]:
    monkeypatch.setattr("rftfm.cli.watch.load_detector", lambda path=None: (None, "detection disabled: test"))
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["watch", *args, "--quiet", "--json", str(out)])
    return result.exit_code, result.output, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_watch_format_auto_on_every_real_log(name: str, tmp_path, monkeypatch):
    code, output, doc = _watch([str(REAL_LOGS / name), "--format", "auto"], tmp_path, monkeypatch)
    assert code == 3, output  # read, detection disabled in this test
    assert doc["steps"] == EXPECTED[name][0] and doc["alarms"] == 0 and doc["episodes"] == []
    assert doc["container"].startswith(EXPECTED[name][3].split(" (")[0])
    assert all(set(v) >= {"source", "missing", "nan"} for v in doc["metrics"].values())


@pytest.mark.parametrize(
    "name,fmt,looks_like",
    [
        ("trl/IITD_AAIPL_outputs/checkpoint-500/trainer_state.json", "verl", "trl"),
        ("trl/IITD_AAIPL_outputs/checkpoint-500/trainer_state.json", "openrlhf", "trl"),
        ("verl/dstack_verl_demo.log", "trl", "verl"),
        ("trl/trl_DAPO_20251022_120531_run_terminal.md", "verl", "trl"),
    ],
)
def test_an_explicit_format_the_log_contradicts_is_refused(name, fmt, looks_like, tmp_path, monkeypatch):
    code, output, doc = _watch([str(REAL_LOGS / name), "--format", fmt], tmp_path, monkeypatch)
    assert code == 2 and doc is None, output
    assert f"--format {looks_like}" in " ".join(output.split()) and "Traceback" not in output


def test_an_sft_log_is_not_an_rl_log(tmp_path, monkeypatch):
    code, output, _ = _watch([str(REAL_LOGS / SFT)], tmp_path, monkeypatch)
    assert code == 2 and "no RL training steps" in " ".join(output.split())
    for command in (
        ["report", str(REAL_LOGS / SFT), "--out", str(tmp_path / "x.html")],
        ["diagnose", str(REAL_LOGS / SFT)],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "no RL training steps" in " ".join(result.output.split()), result.output


def test_diagnose_and_report_read_what_watch_reads(tmp_path, monkeypatch):
    monkeypatch.setattr("rftfm.cli.report.load_detector", lambda path=None: (None, "detection disabled: test"))
    out = tmp_path / "iitd.html"
    result = CliRunner().invoke(app, ["report", str(REAL_LOGS / "trl/IITD_AAIPL_outputs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size < 3_000_000 and "TRL trainer_state.json" in out.read_text()
    missing = CliRunner().invoke(app, ["diagnose", str(tmp_path / "nope.log")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    wrong = CliRunner().invoke(app, ["diagnose", str(REAL_LOGS / "verl/dstack_verl_demo.log"), "--format", "trl"])
    assert wrong.exit_code == 2 and "Traceback" not in wrong.output


@pytest.fixture(scope="module")
def monitors():
    from rftfm.fm.monitor import load_detector, load_diagnoser

    detector, why = load_detector()
    if detector is None:
        pytest.skip(why)
    diagnoser, _ = load_diagnoser()
    return detector, diagnoser


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_real_log_is_watched_and_reported(name: str, monitors):
    """End to end with the packaged detector and diagnoser: nothing fails; episodes account for every alarm."""
    from rftfm.fm.incidents import IncidentStore
    from rftfm.fm.monitor import RunMonitor
    from rftfm.report.html import build_report

    detector, diagnoser = monitors
    events, stats = read_log(REAL_LOGS / name)
    with IncidentStore(":memory:") as store:
        monitor = RunMonitor("real", detector, diagnoser, store)
        for record, trajectories in events:
            monitor.observe(record, trajectories)
        monitor.finish()
        incidents = store.events(run_id="real")
    result = monitor.result
    assert result.error_count == 0, result.errors[:3]
    assert sum(e.alarmed_steps for e in result.episodes) == result.alarm_count
    assert all(e.start_step <= e.end_step for e in result.episodes)
    page = build_report("real", events, incidents, stats=stats, plotly_src="plotly.min.js")
    assert len(page) < 3_000_000 and page.count("<tr class='episode'>") == result.episode_count


@pytest.mark.parametrize(
    "name",
    ["trl/IITD_AAIPL_outputs", "trl/trl_DAPO_20251022_120531_run_terminal.md", "verl/aopd_i80f2v90.output.log",
     "verl/aopd_ry3hgbx5.output.log"],
)
def test_the_real_runs_learning_rate_schedules_are_no_jump(name):
    """A linear decay logged every 10 steps, a slow decay, verl's constant LR: the schedule channel stays silent."""
    from rftfm.fm.schedule import ScheduleState

    events, _ = read_log(REAL_LOGS / name)
    rates = [step.learning_rate for step, _ in events if step.learning_rate is not None]
    assert len(rates) == len(events)  # the learning rate is read from every record
    state = ScheduleState()
    assert max(abs(state.advance(lr)) for lr in rates) <= 1.0


@pytest.mark.parametrize(
    "name, weights",
    [("trl/IITD_AAIPL_outputs", (1.0, 1.0)), ("trl/trl_DAPO_20251022_120531_run_terminal.md", (4.0, 1.0, 1.0))],
)
def test_real_trl_runs_with_several_reward_functions_hold_the_reward_identity(name, weights):
    """Their logged reward is the weighted sum of their functions' means at every step: the weights fitted on the
    first records (the DAPO run weighs its index reward 4, and logs its own ``rewards/total_reward`` beside)."""
    from rftfm.fm import reward_identity

    events, _ = read_log(REAL_LOGS / name)
    state = reward_identity.IdentityState()
    units = [state.advance(s.reward_mean, reward_identity.parts_of(s.extra), s.step) for s, _ in events]
    assert state.weights == pytest.approx(weights) and max(units) < 1e-6


def test_a_collapse_to_short_answers_that_nothing_clipped_is_no_length_limit(monitors):
    """The TRL DAPO run's completions fall from 53 to 2.6 tokens at its second entry with a clipped ratio of 0
    throughout: no length limit cut them, so the diagnosis names none (it had named length_clip_all)."""
    from rftfm.fm.incidents import IncidentStore
    from rftfm.fm.monitor import RunMonitor

    detector, diagnoser = monitors
    events, _ = read_log(REAL_LOGS / "trl/trl_DAPO_20251022_120531_run_terminal.md")
    assert all(r.truncated_ratio == 0.0 for r, _ in events)
    with IncidentStore(":memory:") as store:
        monitor = RunMonitor("dapo", detector, diagnoser, store)
        for record, trajectories in events:
            monitor.observe(record, trajectories)
        monitor.finish()
    first = monitor.result.episodes[0]
    assert first.start_step == 30  # the collapse's second entry: an alarm of the calibrated channels is confirmed
    assert first.diagnosis is not None
    length_limits = {"length_truncation", "length_clip_all"}
    assert first.diagnosis.ranked[0].fault_type not in length_limits
    assert all(h.probability == 0.0 for h in first.diagnosis.ranked if h.fault_type in length_limits)
    # the evidence's value is the length at the alarm, since the collapse began, against the level before it
    (length,) = [e for e in first.diagnosis.evidence if e.signal == "completion_length_mean"]
    assert length.since_step == 20 and length.value == pytest.approx(2.525) and length.expected == pytest.approx(53.35)


@pytest.mark.parametrize(
    "name", ["trl/trl_DAPO_20251022_120531_run_terminal.md", "verl/aopd_i80f2v90.output.log"]
)
def test_a_collapse_that_stays_ends_its_episode_settled_not_recovered(name: str, monitors, capsys):
    """Both real collapses stay collapsed after their alarms stop (the detector takes the new level as the run's):
    the episode ends saying the run did not come back, with the completion length still far below its baseline --
    in the watch's line and in the report's table of episodes alike."""
    from rftfm.fm.incidents import IncidentStore
    from rftfm.fm.monitor import RunMonitor
    from rftfm.report.console import print_episode
    from rftfm.report.html import build_report

    detector, diagnoser = monitors
    events, stats = read_log(REAL_LOGS / name)
    with IncidentStore(":memory:") as store:
        monitor = RunMonitor("real", detector, diagnoser, store, on_episode=print_episode)
        for record, trajectories in events:
            monitor.observe(record, trajectories)
        monitor.finish()
        incidents = store.events(run_id="real")
    first = monitor.result.episodes[0]
    assert not first.open and first.lasting
    (length,) = [e for e in first.lasting if e.signal == "completion_length_mean"]
    assert length.value < 0.1 * length.expected
    assert "did not come back" in capsys.readouterr().out
    page = build_report("real", events, incidents, stats=stats, plotly_src="plotly.min.js")
    assert "the run did not come back: " in page and "completion_length_mean" in page
