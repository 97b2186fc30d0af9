"""Cost of ``rftfm report`` on a long real log, and the ratio against a baseline commit of the report.

    python benchmarks/report_cost.py [--steps 10000] [--old-steps 50] [--baseline 1a9f63e]

Every figure is one end-to-end ``rftfm report LOG`` in a fresh process (read the log, run the
packaged detector and diagnoser offline, write the page): wall time, page size and, for the current
code, the size of the shared plotly.js beside it. The long log is a real verl console log's
step lines repeated (``long_log.py``). The baseline (``--baseline``, extracted with ``git
archive``) draws one plotly ``add_vline`` per diagnosis per panel and takes minutes beyond a few
hundred steps, so the ratio is measured on ``--old-steps`` steps, where both run; it says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from long_log import write_long_log

ROOT = Path(__file__).resolve().parents[1]


def run_report(src: Path, log: Path, out: Path, timeout: float) -> tuple[float | None, int | None]:
    """(seconds, page bytes) of one ``rftfm report`` run with ``src`` first on the path; None on timeout."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    try:
        subprocess.run(
            [sys.executable, "-m", "rftfm.cli", "report", str(log), "--out", str(out)],
            env=env,
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, None
    return time.perf_counter() - start, out.stat().st_size


def old_tree(commit: str, into: Path) -> Path:
    archive = into / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--old-steps", type=int, default=50)
    parser.add_argument("--baseline", default="1a9f63e", help="commit of the code before the report rewrite")
    parser.add_argument("--old-timeout", type=float, default=900.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        new_src, old_src = ROOT / "src", old_tree(args.baseline, tmp)
        (tmp / "new").mkdir()
        (tmp / "old").mkdir()
        small = write_long_log(tmp / "small.log", args.old_steps)
        long = write_long_log(tmp / "long.log", args.steps)
        new_small = run_report(new_src, small, tmp / "new" / "small.html", 600)
        old_small = run_report(old_src, small, tmp / "old" / "small.html", args.old_timeout)
        new_long = run_report(new_src, long, tmp / "new" / "long.html", 600)
        bundle = sum(p.stat().st_size for p in (tmp / "new").glob("plotly-*.min.js"))
    print("rftfm report, real verl log lines repeated, end to end (read + offline detection and diagnosis + page):")
    print(
        f"  new, {args.steps:,} steps: {new_long[0]:.1f} s, page {new_long[1] / 1e6:.2f} MB "
        f"(+ {bundle / 1e6:.1f} MB plotly.js shared beside it)"
    )
    print(f"  new, {args.old_steps:,} steps: {new_small[0]:.1f} s, page {new_small[1] / 1e6:.2f} MB")
    if old_small[0] is None:
        print(f"  old ({args.baseline}), {args.old_steps:,} steps: did not finish in {args.old_timeout:.0f} s")
    else:
        print(
            f"  old ({args.baseline}), {args.old_steps:,} steps: {old_small[0]:.1f} s, "
            f"page {old_small[1] / 1e6:.2f} MB (plotly.js inlined)"
        )
        print(
            f"  ratio old / new at {args.old_steps:,} steps: time x{old_small[0] / new_small[0]:.1f}, "
            f"page size x{old_small[1] / new_small[1]:.0f} "
            f"(x{old_small[1] / (new_small[1] + bundle):.1f} counting the shared bundle)"
        )
    print(f"  (the old code was not run on {args.steps:,} steps: it grows faster than the log)")


if __name__ == "__main__":
    main()
