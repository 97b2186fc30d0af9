"""Compare two evaluation JSON files run by run: what a change gained and lost, fold x run.

    python scripts/compare_runs.py detection OLD.json NEW.json --tiers a,b
    python scripts/compare_runs.py detection R.json R.json --new-method "RFT-FM in the trainer"   # one file
    python scripts/compare_runs.py detection OLD.json NEW.json --tiers a --old-method "RFT-FM in the trainer" \
        --new-method "RFT-FM in the trainer"
    python scripts/compare_runs.py diagnosis OLD.json NEW.json --tiers a
    python scripts/compare_runs.py remediation OLD.json NEW.json

Detection (``rftfm bench evaluate detection --json``): per tier, RFT-FM's mid-run F1 easy / hard (averaged over
families, protocol B) of each file, its normal and control runs alarmed, and the fold x run rows both files hold:
faulty runs (any onset; how many of them mid-run, in brackets) detected only by NEW (gains) or only by OLD (losses),
per fault type, and healthy runs alarmed only by one of them. Diagnosis (``rftfm bench evaluate diagnosis --json``):
per tier, type and family top-1 on the detected easy faults and on every faulty run, over the fold x run rows both
files hold, and each row whose diagnosis moved. The figures docs/*.md cite as "fold x run" come from here.
Remediation (``rftfm bench evaluate remediation --json``): over the faulty runs both files hold, the knob-repairable
ones repaired (loop and, where both have it, ``trainside``) and the code faults halted or alerted with the right
family, in each file, and each run whose outcome, detection, diagnosis or actions moved; the healthy runs with an
intervention in each.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from rftfm.bench.eval_remediation import code_fault_caught
from rftfm.faults.taxonomy import FAULT_TYPES


def detection(
    old: dict[str, Any], new: dict[str, Any], tiers: list[str], new_method: str = "RFT-FM", old_method: str = "RFT-FM"
) -> None:
    for tier in tiers:
        a, b = old["methods"][tier][old_method], new["methods"][tier][new_method]
        alarmed = [sum(r["first_alarm"] is not None for r in m["runs"] if r["kind"] != "fault") for m in (a, b)]
        healthy = sum(r["kind"] != "fault" for r in b["runs"])
        f1_a, f1_b = a["mid_run"]["B"]["avg_f1"], b["mid_run"]["B"]["avg_f1"]
        print(f"tier {tier}: mid-run F1 easy {f1_a['easy']:.1f} -> {f1_b['easy']:.1f}, hard {f1_a['hard']:.1f} -> "
              f"{f1_b['hard']:.1f}; healthy runs alarmed {alarmed[0]} -> {alarmed[1]} of {healthy}")
        rows_a = {(r["fold"], r["run_id"]): r for r in a["runs"]}
        rows_b = {(r["fold"], r["run_id"]): r for r in b["runs"]}
        both = [k for k in rows_a if k in rows_b]
        faulty = [k for k in both if rows_a[k]["kind"] == "fault"]
        gains = Counter(rows_a[k]["fault_type"] for k in faulty if rows_b[k]["detected"] and not rows_a[k]["detected"])
        losses = Counter(rows_a[k]["fault_type"] for k in faulty if rows_a[k]["detected"] and not rows_b[k]["detected"])
        mid = {k for k in faulty if (rows_a[k]["onset_step"] or 1) > 1}
        moved = [sum(k in mid and rows_b[k]["detected"] != rows_a[k]["detected"] and rows_b[k]["detected"] == won
                     for k in faulty) for won in (True, False)]
        print(f"  detections gained {sum(gains.values())} (mid-run onsets {moved[0]}) {dict(gains.most_common())}")
        print(f"  detections lost {sum(losses.values())} (mid-run onsets {moved[1]}) {dict(losses.most_common())}")
        for label, first, second in (("newly alarmed", rows_a, rows_b), ("no longer alarmed", rows_b, rows_a)):
            moved = [k for k in both if first[k]["kind"] != "fault"
                     and first[k]["first_alarm"] is None and second[k]["first_alarm"] is not None]
            print(f"  healthy runs {label}: {len(moved)} {[k[1] for k in moved]}")


def _top1(rows: dict[Any, dict[str, Any]], keys: list[Any]) -> tuple[int, float, float]:
    def family(t: str) -> str | None:
        return FAULT_TYPES[t].family if t in FAULT_TYPES else None

    n = max(len(keys), 1)
    return (len(keys), 100 * sum(rows[k]["diagnosed"] == rows[k]["true"] for k in keys) / n,
            100 * sum(family(rows[k]["diagnosed"]) == family(rows[k]["true"]) for k in keys) / n)


def diagnosis(old: dict[str, Any], new: dict[str, Any], tiers: list[str]) -> None:
    for tier in tiers:
        rows_a = {(r["fold"], r["run_id"]): r for r in old["tiers"][tier]["runs"]}
        rows_b = {(r["fold"], r["run_id"]): r for r in new["tiers"][tier]["runs"]}
        both = [k for k in rows_b if k in rows_a]
        print(f"tier {tier}:")
        for label, rows in (("old", rows_a), ("new", rows_b)):
            easy = [k for k in both if rows[k]["at_alarm"] and rows[k]["strength"] == "easy"]
            print("  %s: detected easy n %d, type %.1f %%, family %.1f %%; all n %d, type %.1f %%, family %.1f %%"
                  % (label, *_top1(rows, easy), *_top1(rows, both)))
        moved = [k for k in both if rows_a[k]["diagnosed"] != rows_b[k]["diagnosed"]]
        right = sum(rows_b[k]["diagnosed"] == rows_b[k]["true"] for k in moved)
        away = sum(rows_a[k]["diagnosed"] == rows_a[k]["true"] for k in moved)
        print(f"  {len(moved)} diagnoses moved, {right} to the right type, {away} away from it")
        for k in moved:
            where = "alarm" if rows_b[k]["at_alarm"] else "fall-back"
            print(f"    {k[0]} {k[1]}: {rows_a[k]['diagnosed']} -> {rows_b[k]['diagnosed']} ({where})")


def _outcome(pair: dict[str, Any], arm: str) -> bool:
    """Repaired (a knob-repairable fault) or halted / alerted with the right family (a code fault) in ``arm``."""
    if pair["halt_only"]:
        return code_fault_caught(pair) if arm == "loop" else bool(pair[f"{arm}_halted"])
    return bool(pair.get(f"{arm}_success"))


def remediation(old: dict[str, Any], new: dict[str, Any]) -> None:
    rows_a = {p["run_id"]: p for p in old["pairs"]}
    rows_b = {p["run_id"]: p for p in new["pairs"]}
    both = [k for k in rows_b if k in rows_a]
    arms = [a for a in ("loop", "trainside") if all(f"{a}_success" in r[k] for r in (rows_a, rows_b) for k in both)]
    for label, rows in (("old", rows_a), ("new", rows_b)):
        parts = []
        for setting in ("easy", "hard"):
            knob = [k for k in both if rows[k]["knob_repairable"] and rows[k]["setting"] == setting]
            for arm in arms:
                parts.append(f"{setting} {arm} {sum(_outcome(rows[k], arm) for k in knob)} / {len(knob)}")
        code = [k for k in both if rows[k]["halt_only"]]
        parts.append(f"code faults halted or alerted, right family {sum(_outcome(rows[k], 'loop') for k in code)} / "
                     f"{len(code)}")
        print(f"{label}: knob-repairable repaired: " + ", ".join(parts))
    fields = ("detected", "diagnosed", "loop_actions", "loop_accuracy")
    for k in both:
        a, b = rows_a[k], rows_b[k]
        outcomes = [(arm, _outcome(a, arm), _outcome(b, arm)) for arm in arms]
        changed = [f for f in fields if a.get(f) != b.get(f)]  # the accuracy is shown, not a reason to list a run
        if any(x != y for _, x, y in outcomes) or set(changed) - {"loop_accuracy"}:
            said = ", ".join(f"{arm} {x} -> {y}" for arm, x, y in outcomes if x != y) or "outcome unchanged"
            print(f"  {k} ({'code fault' if b['halt_only'] else 'knob'}): {said}; "
                  + "; ".join(f"{f} {a.get(f)} -> {b.get(f)}" for f in changed))
    for label, summary in (("old", old), ("new", new)):
        healthy = [h for h in summary.get("healthy", []) if isinstance(h, dict)]
        acted = [h["run_id"] for h in healthy if h.get("interventions") or h.get("halted")]
        print(f"healthy runs with an intervention ({label}): {len(acted)} of {len(healthy)} {acted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("detection", "diagnosis", "remediation"))
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tiers", default="a", help="comma-separated input tiers")
    parser.add_argument("--new-method", default="RFT-FM", help="detection: NEW's method")
    parser.add_argument("--old-method", default="RFT-FM", help="detection: OLD's method")
    args = parser.parse_args()
    old, new = (json.load(open(p)) for p in (args.old, args.new))
    if args.kind == "detection":
        detection(old, new, args.tiers.split(","), args.new_method, args.old_method)
    elif args.kind == "remediation":
        remediation(old, new)
    else:
        diagnosis(old, new, args.tiers.split(","))


if __name__ == "__main__":
    main()
