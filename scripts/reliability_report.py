"""One command for the reliability figures: fuzz sweep, kill tests, load test -> docs/reliability.md.

    python scripts/reliability_report.py                      # the full run (about 15-20 min on 2 cores)
    python scripts/reliability_report.py --steps 100000 --fuzz-files 500 --out /tmp/r.md   # a quick look

1. **Bad input**: ``scripts/fuzz_inputs.py``'s mutation sweep (inputs tried, crashes, records lost),
   then the hypothesis property tests and the security tests (pytest, counted).
2. **Crash safety**: every test of ``tests/test_crash_safety.py``, the slow ones included
   (kill -9 during generation and at four points of a remediation, then resume; damaged
   checkpoints), run with pytest and counted.
3. **Load**: the monitor replays ``--steps`` steps (default 1,000,000) of one continuous run whose
   records cycle through real runs trained here with the embedded TRL engine (a normal run and
   two faulty ones, 64 trajectories per step), or through the runs of ``--bench DIR``.
   ``Detector.observe`` is timed per step (p50 / p99 / max) and the process RSS is sampled every
   ``--steps / 10`` steps; the closed loop's per-step path (``Controller.observe``, alert-only)
   is measured the same way over ``--loop-steps`` steps, with tracemalloc as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from fuzz_inputs import run_fuzz, synthetic_detector  # noqa: E402

# --- tests --------------------------------------------------------------------------------------


def run_pytest(path: str, marker: str = "") -> dict[str, Any]:
    """Run one test file (all markers by default) and count outcomes from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, "-m", marker, f"--junitxml={xml}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        cases = []
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                status = "passed"
                for child in case:
                    if child.tag in ("failure", "error"):
                        status = "failed"
                    elif child.tag == "skipped":
                        status = "skipped"
                cases.append({"name": case.get("name"), "status": status, "seconds": float(case.get("time") or 0)})
    return {
        "path": path,
        "returncode": proc.returncode,
        "seconds": round(seconds, 1),
        "cases": cases,
        "passed": sum(c["status"] == "passed" for c in cases),
        "failed": sum(c["status"] == "failed" for c in cases),
        "skipped": sum(c["status"] == "skipped" for c in cases),
        "tail": proc.stdout[-1500:],
    }


# --- load ---------------------------------------------------------------------------------------


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def source_events(bench: Path | None, steps: int) -> tuple[list, str]:
    """(StepRecord, trajectories) events of a few real runs, and where they came from."""
    if bench is not None:
        from rftfm.io.adapters import read_log

        run_dirs = sorted({p.parent.parent for p in bench.glob("*/*/train/openrlhf_train_train_step.jsonl")})[:3]
        events = [e for d in run_dirs for e in read_log(d)[0]]
        return events, f"{len(run_dirs)} runs of {bench} ({', '.join(d.name for d in run_dirs)})"
    import torch

    from rftfm.bench.runner import quiet, train_run
    from rftfm.records import RunInfo

    quiet()
    torch.set_num_threads(1)
    events: list = []
    runs = [
        ("load-normal", None, "normal"),
        ("load-lr-high", "lr_high", "od_easy_fault"),
        ("load-degeneration", "degeneration", "pg_easy_fault"),
    ]
    for run_id, fault, group in runs:
        info = RunInfo(
            run_id=run_id,
            group=group,
            task_group="arith_a",
            model_size="xs",
            seed=7,
            num_steps=steps,
            control_or_fault="fault" if fault else "normal",
            fault_type=fault,
            fault_family={"lr_high": "od", "degeneration": "pg"}.get(fault or ""),
            fault_strength="easy" if fault else None,
            onset_step=1 if fault else None,
        )
        train_run(info, sinks=[lambda s, t: events.append((s, list(t)))])
    return events, (
        f"3 runs trained here with the embedded TRL engine (arith_a, xs, {steps} steps each, "
        f"{len(events[0][1])} trajectories per step): normal, lr_high (easy), degeneration (easy)"
    )


def load_detector() -> tuple[Any, str]:
    from rftfm.fm.detect import Detector

    try:
        return Detector.load_default(), "the packaged default detector artifact"
    except Exception as exc:  # artifact missing or being re-fitted: the figure is about cost, not accuracy
        return (
            synthetic_detector(),
            f"a detector fitted on synthetic normal runs (default artifact unavailable: {type(exc).__name__})",
        )


def replay(observe, events: list, n: int, sample_every: int, trace: bool) -> dict[str, Any]:
    """Feed ``n`` steps (cycling ``events``, steps renumbered 1..n) to ``observe``; time each call."""
    lat = np.ones(n, dtype=np.int64)  # written now, so their pages do not show up as RSS growth later
    cpu = np.ones(n, dtype=np.int64)  # thread CPU time: excludes waiting for a core on a shared machine
    samples = []
    if trace:
        tracemalloc.start()
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    alarms = 0
    start = time.perf_counter()
    m = len(events)
    for i in range(n):
        record, trajectories = events[i % m]
        record.step = i + 1  # one continuous run: renumber in place (no copy per step)
        c0, t0 = cpu_clock(), clock()
        alarm = observe(record, trajectories)
        lat[i] = clock() - t0
        cpu[i] = cpu_clock() - c0
        alarms += alarm is not None
        if (i + 1) % sample_every == 0 or i == 0:
            samples.append(
                {
                    "step": i + 1,
                    "rss_mb": round(rss_mb(), 1),
                    **({"traced_mb": round(tracemalloc.get_traced_memory()[0] / 1e6, 2)} if trace else {}),
                }
            )
    wall = time.perf_counter() - start
    if trace:
        tracemalloc.stop()
    us = lat / 1e3
    after_first = [s for s in samples if s["step"] >= sample_every]
    growth = (after_first[-1]["rss_mb"] - after_first[0]["rss_mb"]) if len(after_first) > 1 else 0.0
    out = {
        "steps": n,
        "seconds": round(wall, 1),
        "steps_per_s": round(n / wall),
        "alarms": alarms,
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "p999_us": round(float(np.percentile(us, 99.9)), 1),
        "max_us": round(float(us.max()), 1),
        "mean_us": round(float(us.mean()), 1),
        "cpu_p50_us": round(float(np.percentile(cpu / 1e3, 50)), 1),
        "cpu_p99_us": round(float(np.percentile(cpu / 1e3, 99)), 1),
        "samples": samples,
        "rss_growth_mb": round(growth, 1),
        "rss_max_mb": max(s["rss_mb"] for s in samples),
    }
    tail = [s for s in samples if s["step"] >= n // 2]  # steady state: the bounded tables are full by then
    if trace and len(tail) > 1:
        span = tail[-1]["step"] - tail[0]["step"]
        out["traced_growth_bytes_per_step"] = round((tail[-1]["traced_mb"] - tail[0]["traced_mb"]) * 1e6 / span, 1)
    return out


def load_test(steps: int, loop_steps: int, bench: Path | None, source_steps: int) -> dict[str, Any]:
    from rftfm.fm.loop import Controller, ControllerConfig

    events, source = source_events(bench, source_steps)
    detector, which = load_detector()
    result: dict[str, Any] = {
        "source": source,
        "detector": which,
        "source_steps": len(events),
        "trajectories_per_step": round(sum(len(t) for _, t in events) / max(1, len(events)), 1),
    }
    print(f"load: replaying {steps} steps through Detector.observe ({source})", flush=True)
    detector.reset("load", "arith_a", "xs")
    result["detector_observe"] = replay(detector.observe, events, steps, max(1, steps // 10), trace=False)
    print(
        f"load: {result['detector_observe']['seconds']} s; replaying {loop_steps} steps through Controller.observe",
        flush=True,
    )
    from rftfm.fm.incidents import IncidentStore

    loop_detector, _ = load_detector()
    store_dir = tempfile.TemporaryDirectory(prefix="rftfm-load-")
    store = IncidentStore(Path(store_dir.name) / "incidents.db")  # as RFTFMCallback(incidents="incidents.db") runs
    controller = Controller(
        loop_detector,
        None,
        store=store,
        run_id="load",
        task_group="arith_a",
        model_size="xs",
        config=ControllerConfig(remediate=False),
    )
    controller.start(_NoTrainer(), step=0)

    def loop_observe(record, trajectories):
        controller.observe(record, trajectories)
        return None

    result["loop_observe"] = replay(loop_observe, events, loop_steps, max(1, loop_steps // 10), trace=True)
    result["loop_observe"]["alarms"] = controller.counts["alarms"]
    result["loop_observe"]["internal_errors"] = controller.counts["errors"]
    result["loop_observe"]["history_rows"] = len(controller.history)
    store.close()
    store_dir.cleanup()
    return result


class _NoTrainer:
    """A handle with nothing to act on: the loop runs alert-only (the load test measures monitoring)."""

    model = optimizer = scheduler = control = None

    def capabilities(self):
        from rftfm.fm.remediate import Capabilities

        return Capabilities(halt=False)

    def knobs(self) -> dict[str, Any]:
        return {}


# --- the page -----------------------------------------------------------------------------------


def markdown(r: dict[str, Any], command: str) -> str:
    fz, load = r["fuzz"], r["load"]
    det, loop = load["detector_observe"], load["loop_observe"]
    kill = r["tests"]["crash_safety"]
    lines = [
        "# Reliability and security",
        "",
        f"Written by `{command}` on {r['date']} ({r['machine']}). Every number below is measured by that command;",
        "re-run it to refresh this page.",
        "",
        "## Summary",
        "",
        "| what | figure |",
        "|---|---|",
        f"| bad inputs tried (fuzz sweep: log lines, record validations, monitor steps) | {fz['inputs_tried']:,} |",
        f"| crashes (an exception other than a typed `ValidationError`) | {fz['crashes']} |",
        f"| good records lost without a counted skip | {fz['records_lost']} of {fz['good_records']:,} |",
        f"| monitor internal errors on bad input (closed loop, alert-only) | {fz['loop_internal_errors']} |",
        f"| property tests (hypothesis) passed "
        f"| {r['tests']['input']['passed']} of {len(r['tests']['input']['cases'])} |",
        f"| security tests passed | {r['tests']['security']['passed']} of {len(r['tests']['security']['cases'])} |",
        f"| kill / crash-safety tests passed | {kill['passed']} of {len(kill['cases'])} |",
        f"| `Detector.observe` over {det['steps']:,} steps: p50 / p99 / max latency (wall) "
        f"| {det['p50_us']:,} / {det['p99_us']:,} / {det['max_us']:,} µs |",
        f"| `Detector.observe`: p50 / p99 CPU time per step | {det['cpu_p50_us']:,} / {det['cpu_p99_us']:,} µs |",
        f"| `Detector.observe` memory: RSS max, growth after the first "
        f"{det['samples'][1]['step'] if len(det['samples']) > 1 else 0:,} steps "
        f"| {det['rss_max_mb']:,} MB, {det['rss_growth_mb']:+} MB |",
        f"| closed loop per step over {loop['steps']:,} steps: p50 / p99 latency "
        f"| {loop['p50_us']:,} / {loop['p99_us']:,} µs |",
        f"| closed loop memory growth (tracemalloc, last half of the replay) "
        f"| {loop.get('traced_growth_bytes_per_step', 'n/a')} bytes per step |",
        "",
        "## 1. Bad input",
        "",
        f"`scripts/fuzz_inputs.py --files {fz['files']} --seed {fz['seed']}` (run by this command, {fz['seconds']} s): "
        f"{fz['files']:,} log files over five readers "
        "(the loader's JSONL path and the OpenRLHF, TRL, verl and JSONL adapters), "
        f"{fz['log_lines']:,} lines of which {fz['mutated_lines']:,} mutated; "
        f"{fz['model_validations']:,} record-model validations; "
        f"{fz['monitor_steps']:,} steps fed to `Detector.observe` and to the closed loop "
        "(every record the adapters produced, "
        "plus records with NaN, ±inf, 1e308, 10^400, steps out of order and repeated, 0-64 odd trajectories).",
        "",
        "| reader | good records | recovered | skipped, counted | lost | malformed lines counted "
        "| bad values counted | crashes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, c in fz["by_target"].items():
        lines.append(
            f"| {target} | {c.get('good', 0):,} | {c.get('matched', 0):,} | {c.get('skipped_counted', 0):,} "
            f"| {c.get('lost', 0)} | "
            f"{c.get('malformed_counted', 0):,} | {c.get('bad_values_counted', 0):,} | {c.get('crashes', 0)} |"
        )
    lines += [
        "",
        "Mutations applied (counts): " + ", ".join(f"{k} {v:,}" for k, v in sorted(fz["mutations"].items())) + ".",
        "",
        "*Skipped, counted*: the adapters feed a live monitor, so they keep steps strictly increasing; a mutated line",
        'whose step number became larger (e.g. `"step": 1e20`) makes the good steps after it up to that number count',
        "as `out_of_order` (reported in the adapter's statistics, never silent). The loader keeps every line.",
        "Malformed lines (truncated, not JSON, not an object, a step that is not a non-negative integer, numbers",
        "beyond 4300 digits, nesting deeper than the parser allows) are skipped and counted; a schema value of the",
        "wrong type becomes missing and is counted (`bad_values`); NaN and ±inf are missing values, never errors.",
        "",
    ]
    if fz["crash_reports"]:
        lines += (
            ["Crashes found:", ""]
            + [f"- case {c['case']} ({c['stage']}): `{c['error']}`" for c in fz["crash_reports"]]
            + [""]
        )
    lines += [
        "Property tests (`tests/test_reliability_input.py`, hypothesis, run by this command):",
        "",
        "| test | result |",
        "|---|---|",
    ]
    lines += [f"| {c['name']} | {c['status']} |" for c in r["tests"]["input"]["cases"]]
    lines += [
        "",
        "## 2. Crash safety",
        "",
        f"`tests/test_crash_safety.py`, slow tests included, run by this command ({kill['seconds']} s):",
        "",
        "| test | result | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {c['name']} | {c['status']} | {c['seconds']:.1f} |" for c in kill["cases"]]
    lines += [
        "",
        "- generation: the generator and its worker processes are SIGKILLed right after the first run is committed; "
        "the",
        "  resumed generation leaves every run exactly once, complete (3 steps, 24 trajectories), the committed run",
        "  byte-identical, no `.tmp-` directory, a registry with each run once and Parquet that agrees with the JSONL.",
        "- remediation: the watched training process SIGKILLs itself before the diagnosis is stored, inside the",
        "  rollback (weights loaded, optimiser not), between the two actions, and inside the checkpoint written after",
        "  revalidation. After each kill the incident store passes `PRAGMA integrity_check` and holds exactly a prefix",
        "  of an un-killed run's events; every checkpoint under its final name verifies; the restart resumes from the",
        "  newest valid checkpoint with its exact weights and completes the run with no internal error.",
        "- checkpoints: a truncated model file, a flipped byte in the optimiser state, a truncated `meta.json` and a",
        "  state file carrying a pickled `os.system` call (with a matching checksum) are each refused, and the",
        "  previous checkpoint is restored; the pickled call never runs (`torch.load(weights_only=True)`).",
        "",
        "## 3. Load",
        "",
        f"Records: {load['source']}; {load['source_steps']} distinct steps, "
        f"{load['trajectories_per_step']} trajectories per",
        "step on average, replayed in a cycle as one continuous run (two of the three runs are faulty, so the alarm",
        f"path, with its evidence, runs too). Detector: {load['detector']}. "
        "The loop records to a SQLite incident store.",
        "",
        "Latency is wall time per call (on a 2-core machine shared with other jobs, so the tail includes waiting for",
        "a core) and CPU time of the calling thread (the monitor's own cost).",
        "",
        "| path | steps | wall s | steps/s | p50 µs | p99 µs | p99.9 µs | max µs | CPU p50 µs | CPU p99 µs | alarms "
        "| RSS max MB | RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in (("`Detector.observe`", det), ("`Controller.observe` (alert-only loop)", loop)):
        lines.append(
            f"| {name} | {m['steps']:,} | {m['seconds']} | {m['steps_per_s']:,} | {m['p50_us']:,} | {m['p99_us']:,} | "
            f"{m['p999_us']:,} | {m['max_us']:,} | {m['cpu_p50_us']:,} | {m['cpu_p99_us']:,} | {m['alarms']:,} "
            f"| {m['rss_max_mb']:,} | {m['rss_growth_mb']:+} |"
        )
    lines += [
        "",
        "Memory samples of the `Detector.observe` replay (process RSS):",
        "",
        "| step | " + " | ".join(f"{s['step']:,}" for s in det["samples"]) + " |",
        "|---|" + "---|" * len(det["samples"]),
        "| RSS MB | " + " | ".join(str(s["rss_mb"]) for s in det["samples"]) + " |",
        "",
        "Memory samples of the closed-loop replay (RSS and tracemalloc):",
        "",
        "| step | " + " | ".join(f"{s['step']:,}" for s in loop["samples"]) + " |",
        "|---|" + "---|" * len(loop["samples"]),
        "| RSS MB | " + " | ".join(str(s["rss_mb"]) for s in loop["samples"]) + " |",
        "| traced MB | " + " | ".join(str(s.get("traced_mb", "")) for s in loop["samples"]) + " |",
        "",
    ]
    lines += [
        "The detector's streaming state is a fixed set of arrays per run, so its memory stays flat. Every per-step",
        "table of the closed loop is bounded: the diagnoser's feature rows "
        f"(`Controller.history`: {loop['history_rows']:,} rows after",
        f"{loop['steps']:,} steps), eval accuracies and step maps (`max_history`), "
        "the timeline and outcomes (`max_history`",
        "entries) and the recent alarm steps (64); the incident store on disk keeps everything. Traced growth over",
        f"the last half of the replay: {loop.get('traced_growth_bytes_per_step', 'n/a')} bytes per step (the first",
        f"{loop['history_rows']:,} steps fill the bounded tables).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps replayed through Detector.observe")
    parser.add_argument("--loop-steps", type=int, default=20_000, help="steps replayed through the closed loop")
    parser.add_argument("--fuzz-files", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bench", type=Path, default=None, help="replay runs of this benchmark instead of training 3 here"
    )
    parser.add_argument("--source-steps", type=int, default=12, help="steps of each run trained here for the load test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    args = parser.parse_args()
    command = "python scripts/reliability_report.py" + "".join(
        f" {a}" for a in shlex.split(" ".join(sys.argv[1:])) if not a.startswith("--out") and a != str(args.out)
    )
    started = time.perf_counter()
    print(f"fuzz: {args.fuzz_files} files", flush=True)
    fuzz = run_fuzz(args.fuzz_files, args.seed)
    print(
        f"fuzz: {fuzz['inputs_tried']} inputs, {fuzz['crashes']} crashes, {fuzz['records_lost']} lost; tests",
        flush=True,
    )
    tests = {
        "input": run_pytest("tests/test_reliability_input.py"),
        "security": run_pytest("tests/test_security.py"),
        "crash_safety": run_pytest("tests/test_crash_safety.py"),
    }
    for name, t in tests.items():
        print(
            f"tests {name}: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped ({t['seconds']} s)",
            flush=True,
        )
    load = load_test(args.steps, args.loop_steps, args.bench, args.source_steps)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "fuzz": fuzz,
        "tests": tests,
        "load": load,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        markdown(result, command) + f"\nTotal time of the command: {result['total_seconds']:,} s.\n", encoding="utf-8"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    det, loop = load["detector_observe"], load["loop_observe"]
    print(
        f"wrote {args.out}: inputs {fuzz['inputs_tried']}, crashes {fuzz['crashes']}, lost {fuzz['records_lost']}, "
        f"kill tests {tests['crash_safety']['passed']}/{len(tests['crash_safety']['cases'])}, "
        f"observe p50 {det['p50_us']} us p99 {det['p99_us']} us "
        f"RSS max {det['rss_max_mb']} MB (growth {det['rss_growth_mb']} MB), "
        f"loop p50 {loop['p50_us']} us, {loop.get('traced_growth_bytes_per_step')} B/step"
    )
    bad = (
        fuzz["crashes"]
        or fuzz["records_lost"]
        or any(t["failed"] or t["returncode"] not in (0,) for t in tests.values())
    )
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
