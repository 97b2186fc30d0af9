"""Which runs of a benchmark score identical completions of one prompt differently (:mod:`rftfm.fm.repeat_rewards`),
before or after a fault's onset, by kind and fault type, and the most disagreeing sets a healthy record has: the check
behind its module docstring and docs/detection.md, method 3 (o).

    python scripts/repeat_rewards_runs.py --data /work/data/h31
"""

from __future__ import annotations

from benchmark_runs import load_runs, rule_firings

from rftfm.fm import repeat_rewards


def main() -> None:
    runs, features, ids, kinds = load_runs(__doc__)
    most = rule_firings(runs, features, ids, kinds, repeat_rewards.SIGNAL, repeat_rewards.RepeatState,
                        "repeat a completion of one prompt in some batch", "disagreeing sets")
    print(f"most disagreeing sets at a healthy record: {most:g} (flagged above {repeat_rewards.LIMIT:g} over the last "
          f"{repeat_rewards.RECENT} records)")


if __name__ == "__main__":
    main()
