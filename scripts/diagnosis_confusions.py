"""The most frequent wrong diagnoses of a diagnosis evaluation, and how far its type top-1 rests on each pair.

    python scripts/diagnosis_confusions.py --json docs/results/diagnosis-config.json [--tier a] [--top 10]

Reads the per-run rows of ``rftfm bench evaluate diagnosis --json`` (one per fold x held-out faulty run): among the
detected easy faults (diagnosed at the detector's alarm, as the headline counts them), the (true -> diagnosed) pairs
that are wrong, most frequent first, each with its share of the errors and whether it stays within the family.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rftfm.faults.taxonomy import FAULT_TYPES


def family(name: str) -> str:
    return FAULT_TYPES[name].family if name in FAULT_TYPES else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--tier", default="a")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    runs = [r for r in json.loads(args.json.read_text())["tiers"][args.tier]["runs"]
            if r["at_alarm"] and r["strength"] == "easy"]
    right = sum(r["true"] == r["diagnosed"] for r in runs)
    wrong = Counter((r["true"], r["diagnosed"]) for r in runs if r["true"] != r["diagnosed"])
    errors = sum(wrong.values())
    print(f"tier {args.tier}, detected easy faults: {len(runs)} rows, type top-1 {100 * right / len(runs):.1f} %, "
          f"{errors} wrong")
    print("| true | diagnosed | rows | share of the wrong | same family |")
    print("|---|---|---|---|---|")
    for (true, said), n in wrong.most_common(args.top):
        same = "yes" if family(true) == family(said) else "no"
        print(f"| {true} | {said} | {n} | {100 * n / errors:.1f} % | {same} |")


if __name__ == "__main__":
    main()
