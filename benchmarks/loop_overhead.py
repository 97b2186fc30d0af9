"""Compute overhead of the RFT-FM loop: healthy runs trained with the loop on vs off.

    python benchmarks/loop_overhead.py [--runs 4] [--steps 28] [--detector F --diagnoser F]

Prints wall time per arm, the overhead in percent (target <= 20 %), and the loop's own
share (time inside the controller: detection, diagnosis, checkpoints).
"""

from __future__ import annotations

import argparse

from rftfm.bench.eval_remediation import run_arm
from rftfm.bench.runner import quiet
from rftfm.records import RunInfo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--detector")
    parser.add_argument("--diagnoser")
    args = parser.parse_args()
    quiet()
    off = on = monitor = 0.0
    for i in range(args.runs):
        info = RunInfo(run_id=f"overhead-{i}", group="normal", task_group=("arith_a", "arith_b", "tool")[i % 3],
                       model_size="xs", seed=500 + i, control_or_fault="normal", num_steps=args.steps)
        a, _ = run_arm(info, "off", args.detector, args.diagnoser)
        b, _ = run_arm(info, "on", args.detector, args.diagnoser)
        off, on, monitor = off + a.wall_s, on + b.wall_s, monitor + b.monitor_s
        print(f"{info.run_id} {info.task_group}: off {a.wall_s:.2f} s, on {b.wall_s:.2f} s (loop {b.monitor_s:.2f} s, "
              f"{b.interventions} interventions)")
    print(f"total: off {off:.1f} s, on {on:.1f} s -> overhead {100 * (on / off - 1):.1f} % "
          f"(loop's own time {100 * monitor / off:.1f} % of the clean wall time; target <= 20 %)")


if __name__ == "__main__":
    main()
