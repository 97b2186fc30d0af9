"""HTML report: content, escaping of log strings, and rendering in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner
from watch_fixtures import train_real_run

from rftfm.cli import app
from rftfm.fm.incidents import IncidentStore
from rftfm.fm.types import Action, Alarm, Diagnosis, Hypothesis, Outcome, SignalEvidence
from rftfm.io.adapters import read_log
from rftfm.report.html import build_report, write_report

EVIL = "<script>alert('x')</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return train_real_run(tmp_path_factory.mktemp("report"), run_id="report-run", num_steps=6)


def incidents_for(run_id: str) -> list[dict]:
    store = IncidentStore(":memory:")
    alarm = Alarm(
        run_id=run_id,
        step=4,
        score=6.0,
        threshold=2.5,
        evidence=[
            SignalEvidence(signal="kl", direction="up", value=2.0, expected=0.1, z=8.0),
            SignalEvidence(signal=EVIL, direction="down", z=-5.0),
        ],
    )
    diagnosis = Diagnosis(
        run_id=run_id,
        step=4,
        ranked=[
            Hypothesis(family="od", fault_type="lr_high", probability=0.7),
            Hypothesis(family="rf", fault_type="reward_scale", probability=0.2),
        ],
        evidence=alarm.evidence,
        summary=f"lr_high since step 3: KL x20 {EVIL}",
    )
    action = Action(kind="set_knob", knob="learning_rate", value=3e-5, previous=3e-4, reason="lr_high")
    store.record("alarm", run_id, 4, alarm, time_s=100.0)
    store.record("diagnosis", run_id, 4, diagnosis, time_s=101.0)
    store.record("action", run_id, 5, action, time_s=102.0)
    store.record("outcome", run_id, 6, Outcome(action=action, result="kept", detail="cleared"), time_s=103.0)
    events = store.events(run_id=run_id)
    store.close()
    return events


def evil_events(real_run):
    """The real run's records with a <script> tag in a metric name and in a completion."""
    events, stats = read_log(real_run.run_dir)
    for step, trajs in events:
        step.extra[EVIL] = 1.0 + step.step
        trajs[0].completion = EVIL + "</pre></td></table>"
        trajs[0].prompt_id = EVIL
    return events, stats


def page_figures(page: str) -> list[dict]:
    text = re.search(r"<script type='application/json' id='rftfm-figures'>(.*?)</script>", page, re.S).group(1)
    return json.loads(text)


def test_report_sections_and_markers(real_run, tmp_path):
    events, stats = read_log(real_run.run_dir)
    incidents = incidents_for(real_run.info.run_id)
    page = build_report(real_run.info.run_id, events, incidents, source=str(real_run.run_dir), stats=stats)
    for heading in (
        "alarm episodes",
        "training signals",
        "trajectory distributions",
        "diagnosis",
        "sample completions",
        "incident timeline",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert "lr_high" in page and "reward_scale" in page
    assert "set_knob learning_rate" in page
    assert "id='fig-metrics'" in page and "id='fig-trajectories'" in page
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page)  # self-contained: nothing fetched
    assert len(page) > 1_000_000  # plotly.js is inlined
    assert "<div id='rftfm-status' hidden" in page  # the render status is for the browser test, not the reader


def test_episodes_are_shaded_once_and_their_evidence_comes_first(real_run):
    events, stats = read_log(real_run.run_dir)
    page = build_report(real_run.info.run_id, events, incidents_for(real_run.info.run_id), stats=stats)
    figures = page_figures(page)
    first = figures[0]
    assert first["div"] == "fig-metrics-0" and first["fig"]["data"][0]["name"] == "kl"  # the alarm cites kl
    for fig in figures:  # one shaded span per episode on every panel, no per-step marks
        rects = [s for s in fig["fig"]["layout"].get("shapes", []) if s["type"] == "rect"]
        assert len(rects) == 1 and rects[0]["x0"] < 4 < rects[0]["x1"]
        assert all(trace.get("name") != "alarm" for trace in fig["fig"]["data"])
    labels = [a["text"] for f in figures for a in f["fig"]["layout"].get("annotations", [])]
    assert labels == ["lr_high"]  # the diagnosis is named once
    assert sum(f["lazy"] for f in figures) >= 1  # the signals no alarm cites are folded away
    assert page.count("<tr class='episode'>") == 1


def test_a_long_run_is_downsampled_and_stays_small(tmp_path):
    from rftfm.records import StepRecord

    events = [
        (
            StepRecord(
                run_id="long",
                step=i,
                reward_mean=(i % 97) / 97,
                kl=0.01 * (i % 13),
                entropy=1 / (1 + i % 7),
                extra={"x": float(i)},
            ),
            [],
        )
        for i in range(1, 20001)
    ]
    alarms = [
        {
            "kind": "alarm",
            "run_id": "long",
            "step": s,
            "time": float(s),
            "payload": {"score": 9.0, "threshold": 1.0, "evidence": []},
        }
        for s in range(5000, 5200)
    ]
    page = write_report(tmp_path / "long.html", "long", events, alarms, inline_js=False)
    assert page.stat().st_size < 3_000_000
    assert (tmp_path / next(p.name for p in tmp_path.glob("plotly-*.min.js"))).stat().st_size > 1_000_000
    text = page.read_text()
    assert re.search(r"<script src='plotly-[0-9.]+\.min\.js'>", text)  # shared, local, relative
    figures = page_figures(text)
    assert all(len(f["fig"]["data"][0]["x"]) <= 1200 for f in figures)
    assert "1 (200 alarmed steps, first at step 5000)" in text


def test_log_strings_are_escaped(real_run):
    events, stats = evil_events(real_run)
    page = build_report(real_run.info.run_id, events, incidents_for(real_run.info.run_id), stats=stats)
    assert "<script>alert" not in page  # nowhere: not in HTML text, not in the figure JSON
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # shown as text in tables
    assert "</pre></td></table>" not in page
    figures = re.search(r"<script type='application/json' id='rftfm-figures'>(.*?)</script>", page, re.S).group(1)
    assert "<" not in figures and ">" not in figures


def chromium_run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chrome-profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def console_errors(stderr: str) -> list[str]:
    messages = re.findall(r":CONSOLE(?:\(\d+\))?:?\d*\] \"(.*?)\", source:", stderr)
    return [m for m in messages if re.search(r"error|uncaught|exception|failed", m, re.I)]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(real_run, tmp_path):
    events, stats = evil_events(real_run)
    page = write_report(
        tmp_path / "report.html", real_run.info.run_id, events, incidents_for(real_run.info.run_id), stats=stats
    )
    url = page.resolve().as_uri()

    dom = chromium_run(["--enable-logging=stderr", "--v=0", "--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    figures = page_figures(page.read_text())
    shown = sum(not f["lazy"] for f in figures)
    status = re.search(r"<div id=\"rftfm-status\"[^>]*>(.*?)</div>", dom.stdout, re.S)
    assert status is not None, dom.stdout[:2000]
    assert f"RFTFM-RENDERED {shown}" in status.group(1), status.group(1)  # the unfolded figures, at load
    assert 'data-errors="0"' in status.group(0)
    assert console_errors(dom.stderr) == []
    assert dom.stdout.count('class="main-svg"') >= shown  # plotly drew SVG charts
    assert "<script>alert" not in dom.stdout  # no injected element in the live DOM either
    opened = chromium_run(["--enable-logging=stderr", "--v=0", "--dump-dom", url + "#open-all"], tmp_path)
    status = re.search(r"<div id=\"rftfm-status\"[^>]*>(.*?)</div>", opened.stdout, re.S)
    assert f"RFTFM-RENDERED {len(figures)}" in status.group(1), status.group(1)  # the folded ones draw when opened
    assert console_errors(opened.stderr) == []

    # a TRL metric log (no trajectories, no incidents) renders too
    trl_events, trl_stats = read_log(real_run.trl_jsonl)
    trl_page = write_report(tmp_path / "trl.html", "trl-run", trl_events, [], stats=trl_stats, inline_js=False)
    trl_dom = chromium_run(
        ["--enable-logging=stderr", "--v=0", "--dump-dom", trl_page.resolve().as_uri() + "#open-all"], tmp_path
    )
    trl_figures = page_figures(trl_page.read_text())
    assert (
        f"RFTFM-RENDERED {len(trl_figures)}" in trl_dom.stdout and console_errors(trl_dom.stderr) == []
    )  # shared plotly.js

    shot = tmp_path / "report.png"
    result = chromium_run([f"--screenshot={shot}", "--window-size=1200,900", url], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_the_console_check_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom');</script></body></html>")
    result = chromium_run(["--enable-logging=stderr", "--v=0", "--dump-dom", bad.resolve().as_uri()], tmp_path)
    assert console_errors(result.stderr), result.stderr[-2000:]


def test_report_command(real_run, tmp_path, monkeypatch):
    monkeypatch.setattr("rftfm.cli.report.load_detector", lambda path=None: (None, "detection disabled: test"))
    db = tmp_path / "inc.db"
    store = IncidentStore(db)
    for event in incidents_for(real_run.info.run_id):
        store.record(event["kind"], event["run_id"], event["step"], event["payload"], time_s=event["time"])
    store.record("run", real_run.info.run_id, None, {"source": str(real_run.run_dir)})
    store.close()
    runner = CliRunner()
    out = tmp_path / "by-id.html"
    result = runner.invoke(app, ["report", real_run.info.run_id, "--incidents", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "lr_high" in page
    assert "benchmark label (evaluation only)</td><td>normal run (no fault injected)" in page  # from run_info.json
    out2 = tmp_path / "by-path.html"
    result = runner.invoke(app, ["report", str(real_run.trl_jsonl), "--out", str(out2)])
    assert result.exit_code == 0, result.output
    assert "This log has no per-trajectory records" in out2.read_text()
    result = runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(out2)])
    assert result.exit_code == 2


def test_default_report_name_cannot_escape_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("rftfm.cli.report.load_detector", lambda path=None: (None, "detection disabled: test"))
    log = tmp_path / "evil.jsonl"
    log.write_text('{"step": 1, "reward_mean": 0.1}\n')
    result = CliRunner().invoke(app, ["report", str(log), "--run-id", "../../../tmp/<script>x"])
    assert result.exit_code == 0, result.output
    written = [p.name for p in tmp_path.glob("*.html")]
    assert written == ["_.._.._tmp_script_x.html"]  # written here, not three directories up


def test_odd_incident_payloads_cost_a_section_not_the_report(real_run):
    events, _ = read_log(real_run.run_dir)
    odd = [
        {
            "kind": "diagnosis",
            "run_id": "r",
            "step": 2,
            "time": 1.0,
            "payload": {"ranked": "not a list", "evidence": [1, 2]},
        },
        {"kind": "alarm", "run_id": "r", "step": 3, "time": 2.0, "payload": {"evidence": "<b>x</b>"}},
    ]
    page = build_report("r", events, odd)
    assert "could not be built" in page and "<b>x</b>" not in page
    assert "<h2>incident timeline</h2>" in page
