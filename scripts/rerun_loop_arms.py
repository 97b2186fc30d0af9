"""Re-train chosen loop arms of an earlier remediation evaluation and compare them with its rows.

The loop arms are deterministic (same seed, same code path), so a change to the loop that is
meant to keep its behaviour must reproduce them exactly: final accuracy, steps trained, actions,
interventions, halts and the cleared verdict.

    python scripts/rerun_loop_arms.py --from docs/results/remediation-seed.json \\
        --arm lr_high-easy-arith_a-xs-o10-s301:loop --arm normal-arith_a-xs-s1154:on
    python scripts/rerun_loop_arms.py --from docs/results/remediation-config-tool.json --data DIR \
        --detector det-tool.json --diagnoser diag-tool.json --arm RUN_ID:loop   # a held-out-fold evaluation

Prints one line per arm (``same`` or the fields that differ) and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rftfm.bench import eval_remediation as ev
from rftfm.bench.presets import preset_runs_table

#: summary field (without the arm prefix) -> ArmResult field
PAIR_FIELDS = {
    "accuracy": "final_accuracy",
    "interventions": "interventions",
    "halted": "halted",
    "cleared": "cleared",
    "alarms_after": "alarms_after",
    "steps": "steps",
    "actions": "actions",
}
HEALTHY_FIELDS = {
    "accuracy_on": "final_accuracy",
    "alarms": "alarms",
    "interventions": "interventions",
    "halted": "halted",
}


def expected_fields(summary: dict[str, Any], run_id: str, arm: str) -> dict[str, tuple[Any, str]]:
    """(expected value, ArmResult field) per summary field of ``run_id``'s ``arm``."""
    if arm == "on":
        row = next(r for r in summary["healthy"] if r["run_id"] == run_id)
        return {name: (row[name], field) for name, field in HEALTHY_FIELDS.items()}
    row = next(r for r in summary["pairs"] if r["run_id"] == run_id)
    if arm == "clean":  # the faulty run's clean twin: only its accuracy and length are kept
        return {name: (row[name], field) for name, field in (("clean_accuracy", "final_accuracy"),
                                                             ("clean_steps", "steps"))}
    out = {f"{arm}_{name}": (row[f"{arm}_{name}"], field) for name, field in PAIR_FIELDS.items()}
    if arm == "loop":
        out["diagnosed"] = (row["diagnosed"], "diagnosed")
        out["detected"] = (row["detected"], "alarms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, type=Path, help="an earlier `--json` summary")
    parser.add_argument(
        "--preset",
        default="classic",
        help="the preset whose runs the summary holds (classic: the earlier evaluations' full preset)",
    )
    parser.add_argument("--data", type=Path, help="a benchmark directory whose runs the summary holds (not a preset)")
    parser.add_argument("--detector", help="the detector artifact the summary used (default: the shipped one)")
    parser.add_argument("--diagnoser", help="the diagnoser artifact the summary used (default: the shipped one)")
    parser.add_argument(
        "--arm", action="append", required=True,
        help="RUN_ID:ARM (ARM: loop, trainside, generic, none or clean of a faulty run; on of a healthy one)"
    )
    parser.add_argument(
        "--digest",
        type=Path,
        help="also write each arm's full result (timings left out) here, "
        "one JSON line per arm, to compare two code versions exactly",
    )
    args = parser.parse_args()
    summary = json.loads(args.source.read_text(encoding="utf-8"))
    runs = ev.load_runs(args.data) if args.data else preset_runs_table(args.preset)
    faulty, healthy = ev.select_runs(runs, None, None, None)
    infos = {r.run_id: r for r in [*faulty, *healthy]}
    differ = 0
    digest = open(args.digest, "w", encoding="utf-8") if args.digest else None
    for spec in args.arm:
        run_id, arm = spec.rsplit(":", 1)
        result, _ = ev.run_arm(infos[run_id], arm, args.detector, args.diagnoser)
        got = vars(result)
        if digest is not None:
            digest.write(json.dumps({k: v for k, v in got.items() if k not in ("wall_s", "monitor_s")}) + "\n")
            digest.flush()
        diffs = []
        for name, (want, field) in expected_fields(summary, run_id, arm).items():
            value = got[field] > 0 if name == "detected" else got[field]
            if value != want:
                diffs.append(f"{name}: {want!r} -> {value!r}")
        differ += bool(diffs)
        print(
            f"{spec}: {'same' if not diffs else 'DIFFERS ' + '; '.join(diffs)} "
            f"(accuracy {result.final_accuracy:.4f}, {result.steps} steps, actions {result.actions}, outcomes "
            f"{result.outcomes})",
            flush=True,
        )
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
