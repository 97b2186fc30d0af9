"""Which runs of a benchmark lose completions to no reward function scoring them (:mod:`rftfm.fm.unscored`), before or
after a fault's onset, by kind and fault type, and the largest share a healthy record loses: the check behind its
module docstring and docs/detection.md, method 3 (n).

    python scripts/unscored_runs.py --data /work/data/h31
"""

from __future__ import annotations

from benchmark_runs import load_runs, rule_firings

from rftfm.fm import unscored


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    largest = rule_firings(runs, features, ids, kinds, unscored.SIGNAL, unscored.UnscoredState,
                           "say how many completions went unscored", "share unscored")
    print(f"largest share unscored at a healthy record: {largest:.3g} (flagged above {unscored.LIMIT:g})")


if __name__ == "__main__":
    main()
