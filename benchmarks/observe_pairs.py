"""``observe`` cost of this checkout against another one's, in back-to-back process pairs.

One process's timings on a shared 2-core machine move by a third from run to run (a process runs "fast" or "slow"
as a whole), so one run of ``bench_observe.py`` on each side cannot compare two versions. This runs
``bench_observe.py`` ``--pairs`` times for each side, alternating (the baseline with ``PYTHONPATH`` set to the other
checkout's ``src``), and prints each run's median at 128 trajectories per record, then each side's smallest and
median run. Usage::

    git worktree add /tmp/base <commit>
    python benchmarks/observe_pairs.py --baseline-src /tmp/base/src [--pairs 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).with_name("bench_observe.py")


def one_run(repeats: int, src: str | None) -> float:
    """The median ``observe`` ms per record at 128 trajectories of one ``bench_observe.py`` process."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, str(BENCH), "--repeats", str(repeats)], env=env, capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"observe @ 128 trajectories/step.*?median ([0-9.]+) ms", out)
    if found is None:
        raise RuntimeError(f"no 128-trajectory line in the benchmark's output:\n{out}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", required=True, help="the other checkout's src directory")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="bench_observe.py --repeats")
    args = parser.parse_args()
    before, after = [], []
    print("| pair | baseline ms | this checkout ms |\n|---|---|---|")
    for k in range(args.pairs):
        before.append(one_run(args.repeats, args.baseline_src))
        after.append(one_run(args.repeats, None))
        print(f"| {k + 1} | {before[-1]:.3f} | {after[-1]:.3f} |", flush=True)
    for name, runs in (("baseline", before), ("this checkout", after)):
        print(f"{name}: smallest {min(runs):.3f} ms, median {statistics.median(runs):.3f} ms of {len(runs)} runs")


if __name__ == "__main__":
    main()
