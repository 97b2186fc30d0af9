"""How fast the watch path is: ``rftfm watch`` end to end, adapter parsing, tail-follow latency, report generation.

    python benchmarks/watch_throughput.py [--watch-steps 10000] [--steps 20000] [--replay-steps 100000]

Prints measured figures (no pass/fail): the wall time of ``rftfm watch LOG --quiet --json`` in a
fresh process on a real verl console log's step lines repeated to ``--watch-steps`` (the packaged
detector and diagnoser, loading included); lines parsed per second per format; the median and
p95 latency from a line being flushed to it being returned by ``Follower.poll`` at a 10 ms poll
interval; the time and size of an HTML report for a long run; the monitor's per-step cost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from long_log import write_long_log

from rftfm.io.adapters import read_log
from rftfm.io.follow import Follower
from rftfm.records import StepRecord
from rftfm.report.html import build_report


def trl_row(step: int, rng: random.Random) -> dict:
    return {
        "step": step,
        "loss": rng.gauss(0, 0.01),
        "grad_norm": rng.uniform(0.5, 2),
        "learning_rate": 1e-6,
        "num_tokens": 1000.0 * step,
        "completions/mean_length": rng.uniform(100, 200),
        "completions/max_length": 256.0,
        "completions/clipped_ratio": rng.random() / 10,
        "rewards/acc/mean": rng.random(),
        "reward": rng.random(),
        "reward_std": rng.random() / 2,
        "frac_reward_zero_std": rng.random() / 4,
        "kl": rng.random() / 100,
        "entropy": rng.uniform(0.3, 0.9),
        "clip_ratio/low_mean": 0.0,
        "clip_ratio/high_mean": 0.0,
        "clip_ratio/region_mean": 0.0,
        "epoch": step / 1000,
    }


def verl_row(step: int, rng: random.Random) -> dict:
    return {
        "step": step,
        "data": {
            "critic/score/mean": rng.random(),
            "critic/rewards/mean": rng.random(),
            "actor/entropy": rng.random(),
            "actor/kl_loss": rng.random() / 100,
            "actor/pg_loss": rng.gauss(0, 0.01),
            "actor/grad_norm": rng.random(),
            "actor/lr": 1e-6,
            "actor/pg_clipfrac": rng.random() / 10,
            "response_length/mean": 300.0,
            "response_length/max": 1024.0,
            "response_length/clip_ratio": 0.01,
            "timing_s/step": 50.0,
        },
    }


def parse_rate(tmp: Path, steps: int) -> dict[str, float]:
    rng = random.Random(0)
    out = {}
    for name, make in (("trl", trl_row), ("verl", verl_row)):
        path = tmp / f"{name}.jsonl"
        path.write_text("".join(json.dumps(make(i, rng)) + "\n" for i in range(1, steps + 1)))
        start = time.perf_counter()
        events, _ = read_log(path)
        elapsed = time.perf_counter() - start
        assert len(events) == steps
        out[name] = steps / elapsed
    return out


def follow_latency(tmp: Path, lines: int = 300, interval: float = 0.01) -> tuple[float, float]:
    path = tmp / "live.jsonl"
    path.write_text("")
    sent: dict[int, float] = {}
    latencies: list[float] = []

    def writer() -> None:
        with open(path, "a") as handle:
            for i in range(lines):
                sent[i] = time.perf_counter()
                handle.write(json.dumps({"i": i}) + "\n")
                handle.flush()
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    follower = Follower(path)
    while len(latencies) < lines:
        for line in follower.poll():
            latencies.append(time.perf_counter() - sent[json.loads(line)["i"]])
        time.sleep(interval)
    thread.join()
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.95 * len(latencies))]


def report_cost(steps: int = 2000) -> tuple[float, float]:
    rng = random.Random(1)
    events = [
        (
            StepRecord(
                run_id="long",
                step=i,
                reward_mean=rng.random(),
                kl=rng.random(),
                entropy=rng.random(),
                grad_norm=rng.random(),
                extra={"x": rng.random()},
            ),
            [],
        )
        for i in range(1, steps + 1)
    ]
    start = time.perf_counter()
    page = build_report("long", events, [])
    return time.perf_counter() - start, len(page) / 1e6


def monitor_cost(steps: int) -> str:
    """Per-step latency and memory of RunMonitor (features + packaged detector) over a long replay."""
    import resource

    from rftfm.fm.monitor import RunMonitor, load_detector

    detector, why = load_detector()
    if detector is None:
        return f"monitor replay: skipped ({why})"
    rng = random.Random(2)
    monitor = RunMonitor("replay", detector, None, None)
    latencies = []
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(1, steps + 1):
        record = StepRecord(
            run_id="replay",
            step=i,
            reward_mean=rng.random(),
            reward_std=rng.random() / 2,
            kl=rng.random() / 50,
            entropy=rng.uniform(0.5, 0.9),
            grad_norm=rng.uniform(0.5, 2),
            completion_length_mean=rng.uniform(2, 4),
        )
        start = time.perf_counter()
        monitor.observe(record, [])
        latencies.append(time.perf_counter() - start)
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    latencies.sort()
    return (
        f"monitor replay of {steps:,} steps (features + packaged detector, no trajectories): "
        f"median {1e6 * statistics.median(latencies):.0f} us/step, "
        f"p99 {1e6 * latencies[int(0.99 * len(latencies))]:.0f} us/step, "
        f"peak RSS growth {(rss_end - rss_start) / 1024:.1f} MB, {monitor.result.alarm_count:,} alarms "
        "(random signals: nearly every step alarms, the monitor's worst case)"
    )


def watch_cost(tmp: Path, steps: int) -> str:
    """``rftfm watch`` on a long real log, end to end in a fresh process."""
    log = write_long_log(tmp / "long.log", steps)
    summary = tmp / "watch.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rftfm.cli", "watch", str(log), "--format", "auto", "--quiet", "--json", str(summary)],
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    doc = json.loads(summary.read_text())
    return (
        f"rftfm watch on {steps:,} real verl steps (aopd_i80f2v90 repeated), end to end: {elapsed:.1f} s "
        f"(exit {done.returncode}; {doc['steps']:,} steps, {doc['alarms']:,} alarmed, "
        f"{doc['episode_count']} episode(s), "
        f"{len(doc['monitor_error_messages'])} monitor error(s))"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watch-steps", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--replay-steps", type=int, default=100000)
    args = parser.parse_args()
    replay = monitor_cost(args.replay_steps)  # first, so its peak-memory figure is its own
    with tempfile.TemporaryDirectory() as tmp:
        watch = watch_cost(Path(tmp), args.watch_steps)
        rates = parse_rate(Path(tmp), args.steps)
        median, p95 = follow_latency(Path(tmp))
    seconds, megabytes = report_cost()
    print(watch)
    for name, rate in rates.items():
        print(f"adapter {name}: {rate:,.0f} step lines/s ({args.steps} lines)")
    print(f"follow latency at 10 ms polling: median {1000 * median:.1f} ms, p95 {1000 * p95:.1f} ms")
    print(f"report for a 2,000-step run: {seconds:.2f} s, {megabytes:.1f} MB")
    print(replay)


if __name__ == "__main__":
    main()
