"""Cost of ``Detector.observe`` per train step at 64 and 128 trajectories, against one train step.

Records come from a real embedded-engine run (TRL GRPO on the CPU, 64 trajectories per
step; 128 = two steps' trajectories merged), cycled into timed runs of ``--records`` records: the
run's first records (warm-up: the tracker fills its reference) are reported apart from the rest.
The detector is the shipped default artifact
(or, if there is none yet, one fitted on this run's records). Target: <= 0.5 ms per step at
128 trajectories. Usage: ``python benchmarks/bench_observe.py [--repeats N] [--records N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import polars as pl
import torch

from rftfm.bench.runner import quiet, train_run
from rftfm.fm.detect import Detector
from rftfm.fm.features import step_features
from rftfm.records import RunInfo


def capture_run(num_steps: int) -> tuple[list, list[float]]:
    records, wall = [], []
    last = [time.perf_counter()]

    def sink(step, trajectories):
        now = time.perf_counter()
        wall.append(now - last[0])
        last[0] = now
        records.append((step, list(trajectories)))

    info = RunInfo(
        run_id="bench-observe",
        group="normal",
        task_group="arith_a",
        model_size="xs",
        seed=1,
        control_or_fault="normal",
        num_steps=num_steps,
    )
    train_run(info, sinks=[sink])
    return records, wall


def detector_for(records) -> Detector:
    try:
        return Detector.load_default()
    except FileNotFoundError:
        rows = [{"run_id": f"r{k}", "step": s.step, **step_features(s, t)} for k in range(4) for s, t in records]
        runs = pl.DataFrame(
            {"run_id": [f"r{k}" for k in range(4)], "task_group": ["arith_a"] * 4, "model_size": ["xs"] * 4}
        )
        return Detector().fit(runs, pl.DataFrame(rows))


def time_observe(detector: Detector, steps: list, repeats: int, records: int) -> list[list[float]]:
    """Seconds per ``observe`` call, [repeat][record]: each repeat is a run of ``records`` records that cycles
    through ``steps`` (renumbered 1, 2, ...), so a run's first records (its warm-up) and its long tail both count."""
    per_run = []
    for r in range(repeats):
        detector.reset(f"bench-{r}", "arith_a", "xs")
        run = [steps[i % len(steps)][0].model_copy(update={"step": i + 1}) for i in range(records)]
        times = []
        for i, record in enumerate(run):
            trajectories = steps[i % len(steps)][1]
            start = time.perf_counter()
            detector.observe(record, trajectories)
            times.append(time.perf_counter() - start)
        per_run.append(times)
    return per_run


def _summary(times: list[float]) -> str:
    med, p99 = statistics.median(times), sorted(times)[int(0.99 * (len(times) - 1))]
    return f"median {1000 * med:.3f} ms, p99 {1000 * p99:.3f} ms ({len(times)} calls)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--records", type=int, default=100, help="records per timed run (cycling the captured steps)")
    parser.add_argument("--train-steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet()
    records, wall = capture_run(args.train_steps)
    train_step_s = statistics.median(wall[1:]) if len(wall) > 1 else wall[0]
    detector = detector_for(records)
    doubled = []
    for k in range(0, len(records) - 1, 2):
        (s, a), (_, b) = records[k], records[k + 1]
        doubled.append((s, a + b))  # 128 trajectories: features are rates / means, ids do not matter
    print(
        f"embedded engine: one train step (64 trajectories, median of {len(wall) - 1}) = {1000 * train_step_s:.1f} ms"
    )
    warm = detector.config.tracker.warmup
    for steps in (records, doubled):
        n = len(steps[0][1])
        runs = time_observe(detector, steps, args.repeats, args.records)
        every = [t for run in runs for t in run]
        med = statistics.median(every)
        print(
            f"observe @ {n:>3} trajectories/step, runs of {args.records} records: {_summary(every)}; "
            f"ratio to one train step = {med / train_step_s:.2e} ({100 * med / train_step_s:.3f} %)"
        )
        print(f"    its first {warm} records (the warm-up): {_summary([t for run in runs for t in run[:warm]])}")
        print(f"    records {warm + 1}-{args.records}: {_summary([t for run in runs for t in run[warm:]])}")


if __name__ == "__main__":
    main()
