"""Compute overhead of the RFT-FM loop: healthy runs trained with the loop off, on, and on with an eval callable.

    python benchmarks/loop_overhead.py [--runs 4] [--steps 28]             # the embedded engine's runs
    python benchmarks/loop_overhead.py --user-run [--runs 3] [--steps 80]  # a plain TRL GRPOTrainer subclass

Prints wall time per arm, the overhead in percent, and the loop's own share (time inside the controller:
detection, diagnosis, checkpoints). Each run is trained with the loop off and on, each arm twice, in the order off,
on, on, off (so a drift of the machine's speed that is linear over them cancels); with ``--user-run`` in three arms
(loop off; on, deciding from train-side metrics; on with ``RewardEval`` on ``--eval-prompts`` held-out prompts every
``--eval-every`` steps: off, on, on+eval, on+eval, on, off), and the eval callable's calls and seconds are printed
too. Wall times on a shared
machine are noisy: compare arms of one invocation only. A short untimed run with the loop on comes first, so
that the process's one-time costs (imports, first kernels, loading detector and diagnoser) fall on no arm.
"""

from __future__ import annotations

import argparse
import time

from rftfm.bench.eval_remediation import PlainRun, load_components, run_arm, run_plain_arm, warm_worker
from rftfm.bench.runner import quiet
from rftfm.records import RunInfo


def warm_up(args: argparse.Namespace) -> None:
    """Load detector and diagnoser (timed, printed) and train a short run with the loop on (untimed), so that the
    process's one-time costs fall on no arm."""
    start = time.perf_counter()
    load_components(args.detector, args.diagnoser)
    seconds = time.perf_counter() - start
    print(f"not in the figures below: loading detector and diagnoser, once per process, {seconds:.1f} s")
    if args.user_run:
        run_plain_arm(PlainRun(run_id="warm-up", steps=2), "loop+eval", detector_path=args.detector,
                      diagnoser_path=args.diagnoser)
    else:
        warm_worker(args.detector, args.diagnoser)


def engine_runs(args: argparse.Namespace) -> None:
    warm_up(args)
    off = on = monitor = 0.0
    for i in range(args.runs):
        info = RunInfo(
            run_id=f"overhead-{i}",
            group="normal",
            task_group=("arith_a", "arith_b", "tool")[i % 3],
            model_size="xs",
            seed=500 + i,
            control_or_fault="normal",
            num_steps=args.steps,
        )
        a, _ = run_arm(info, "off", args.detector, args.diagnoser)
        b, _ = run_arm(info, "on", args.detector, args.diagnoser)
        b2, _ = run_arm(info, "on", args.detector, args.diagnoser)
        a2, _ = run_arm(info, "off", args.detector, args.diagnoser)
        off, on, monitor = off + a.wall_s + a2.wall_s, on + b.wall_s + b2.wall_s, monitor + b.monitor_s + b2.monitor_s
        print(
            f"{info.run_id} {info.task_group}: off {a.wall_s:.2f} + {a2.wall_s:.2f} s, on {b.wall_s:.2f} + "
            f"{b2.wall_s:.2f} s (loop {b.monitor_s + b2.monitor_s:.2f} s, {b.interventions} interventions)"
        )
    print(
        f"total: off {off:.1f} s, on {on:.1f} s -> overhead {100 * (on / off - 1):.1f} % "
        f"(loop's own time {100 * monitor / off:.1f} % of the clean wall time)"
    )


def user_runs(args: argparse.Namespace) -> None:
    totals = {"clean": 0.0, "loop": 0.0, "loop+eval": 0.0}
    monitor = {"loop": 0.0, "loop+eval": 0.0}
    warm_up(args)
    evals = seconds = 0.0
    for i in range(args.runs):
        run = PlainRun(
            run_id=f"user-overhead-{i}",
            seed=i,
            steps=args.steps,
            eval_every=args.eval_every,
            eval_prompts=args.eval_prompts,
        )
        line = [run.run_id]
        for arm in [*totals, *reversed(totals)]:  # ABC-CBA: a drift of the machine's speed linear over the six cancels
            result, callback = run_plain_arm(run, arm, detector_path=args.detector, diagnoser_path=args.diagnoser)
            totals[arm] += result.wall_s
            line.append(
                f"{arm} {result.wall_s:.1f} s (acc {result.final_accuracy:.3f}, {result.interventions} interv.)"
            )
            if arm in monitor:
                monitor[arm] += result.monitor_s
            if arm == "loop+eval" and callback is not None and callback.summary:
                evals += callback.summary["evaluations"]
                seconds += callback.summary["eval_seconds"]
        print("; ".join(line), flush=True)
    base = totals["clean"]
    for arm in ("loop", "loop+eval"):
        print(
            f"{arm}: {totals[arm]:.1f} s vs {base:.1f} s off -> overhead {100 * (totals[arm] / base - 1):.1f} % "
            f"(loop's own time {100 * monitor[arm] / base:.1f} % of the off wall time)"
        )
    print(
        f"eval callable: {evals:.0f} calls of {args.eval_prompts} prompts, {seconds:.1f} s in all, "
        f"{seconds / max(evals, 1):.3f} s per call ({100 * seconds / base:.1f} % of the off wall time)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--user-run", action="store_true")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--detector")
    parser.add_argument("--diagnoser")
    args = parser.parse_args()
    quiet()
    user_runs(args) if args.user_run else engine_runs(args)


if __name__ == "__main__":
    main()
