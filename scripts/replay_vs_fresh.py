"""Does replaying a rollback's discarded batches cost a persisting fault anything?

A rollback resumes on the discarded steps' own batches (``BatchReplay``): for an undone
configuration push that reproduces the clean run exactly. This script asks whether the replay
hurts a fault that keeps acting. It injects reward noise from step 1 into train-side healthy runs
of the seed split (fresh configurations, none of them a benchmark faulty run, so the held-out side
stays untouched) and trains each three ways: clean; with the loop; with the loop whose rollbacks
continue on fresh batches instead (the trainer's ``replay_last_batches`` disabled). It prints the
repair-criterion pass rate and the mean accuracy ratio to the clean run of both loop variants.

    python scripts/replay_vs_fresh.py --runs 30 --workers 2 > docs/results/replay-vs-fresh.txt
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from typing import Any

from rftfm.bench import eval_remediation as ev
from rftfm.bench.pool import run_in_pool
from rftfm.bench.presets import preset_runs_table
from rftfm.bench.splits import split_runs
from rftfm.faults.taxonomy import group_dir
from rftfm.records import RunInfo

MODES = ("clean", "replay", "fresh")


def train(payload: dict[str, Any], mode: str) -> dict[str, Any]:
    import rftfm.engine.trainer as trainer_module
    from rftfm.bench.runner import quiet

    quiet()
    info = RunInfo.model_validate(payload)
    cls = trainer_module.RecordingGRPOTrainer
    original = cls.replay_last_batches
    if mode == "fresh":
        cls.replay_last_batches = lambda self, steps: 0  # this worker process only, restored below
    try:
        result, _ = ev.run_arm(info, "clean" if mode == "clean" else "loop")
    finally:
        cls.replay_last_batches = original
    return {"run_id": info.run_id, "mode": mode, "accuracy": result.final_accuracy, "cleared": result.cleared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--strength", default="easy", choices=("easy", "hard"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    train_side = split_runs(preset_runs_table("classic"), "seed")[0]
    _, healthy = ev.select_runs(train_side, None, None, None)
    healthy = [h for h in healthy if h.task_group != "tool"][: args.runs]
    faulty = [
        h.model_copy(
            update={
                "run_id": f"reward_noise-{args.strength}-{h.run_id}",
                "control_or_fault": "fault",
                "fault_type": "reward_noise",
                "fault_family": "rf",
                "fault_strength": args.strength,
                "onset_step": 1,
                "group": group_dir("rf", args.strength),
            }
        )
        for h in healthy
    ]
    by_run: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in run_in_pool(train, [(r.model_dump(mode="json"), m) for r in faulty for m in MODES], args.workers):
        by_run[row["run_id"]][row["mode"]] = row
    print(
        f"reward_noise ({args.strength}) from step 1 on {len(faulty)} train-side healthy configurations of the seed "
        "split "
        f"(arithmetic task groups); repair criterion: cleared and accuracy >= {ev.TOLERANCE:.0%} of the clean run's"
    )
    print("rollbacks continue on | repaired | mean accuracy / clean")
    for mode in MODES[1:]:
        rows = [(runs[mode], runs["clean"]["accuracy"]) for runs in by_run.values()]
        passed = sum(r["cleared"] and r["accuracy"] >= ev.TOLERANCE * clean for r, clean in rows)
        ratio = statistics.mean(r["accuracy"] / clean for r, clean in rows if clean)
        label = "the discarded batches (replay)" if mode == "replay" else "fresh batches"
        print(f"{label} | {passed} of {len(rows)} | {ratio:.3f}")


if __name__ == "__main__":
    main()
