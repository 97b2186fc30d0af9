"""A long real log for the watch and report benchmarks: a real verl console log's step lines repeated.

``write_long_log(path, steps)`` takes the step lines of ``../shared/real-logs/verl/<name>`` (as
printed, colour codes and Ray prefixes included) and repeats them, renumbered 1..steps, so the
values are real and the length is what the benchmark needs.
"""

from __future__ import annotations

import re
from pathlib import Path

REAL_LOGS = Path(__file__).resolve().parents[1].parent / "shared" / "real-logs"
_STEP = re.compile(r"step:(\d+) - ")


def write_long_log(path: Path, steps: int, source: str = "verl/aopd_i80f2v90.output.log") -> Path:
    """Write ``steps`` renumbered step lines of a real verl console log to ``path``."""
    lines = [
        line
        for line in (REAL_LOGS / source).read_text(encoding="utf-8", errors="replace").splitlines()
        if _STEP.search(line) and "critic/" in line
    ]
    if not lines:
        raise SystemExit(f"no step lines in {REAL_LOGS / source} (are the real logs beside the repository?)")
    with open(path, "w", encoding="utf-8") as out:
        for i in range(steps):
            out.write(_STEP.sub(f"step:{i + 1} - ", lines[i % len(lines)], count=1) + "\n")
    return path
