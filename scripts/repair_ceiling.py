"""The noise floor of the repair criterion: how often does a run *as good as the clean one* pass it?

Repair success needs final accuracy >= 90 % of the matched clean run's. A repair that undoes a
configuration push resumes into exactly the clean run (the loop replays the discarded batches
with the checkpoint's RNG state). A fault that keeps acting (a noisy verifier, stale rollout
weights, degenerate groups) cannot be undone, only countered: however good the counter, the
repaired run's randomness parts from the clean run's at the onset. This script measures what that
alone costs. For every selected faulty run it trains the clean twin (no fault at all) with one
rollback one step after the onset, to the checkpoint the loop picks (at or before onset - 2),
continued on *fresh* batches (the loop's rollback without its batch replay), no knob turned -- a
run exactly as good as the clean one in expectation -- and scores it by the repair criterion
against the clean twin's unperturbed accuracy from an earlier evaluation. What fails here fails
through the run-to-run noise of RL training alone: the part of the target no counter-measure of a
persisting fault can reach.

    python scripts/repair_ceiling.py --from docs/results/remediation-seed.json --workers 2 \\
        --markdown docs/results/repair-ceiling.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rftfm.bench import eval_remediation as ev
from rftfm.bench.pool import run_in_pool
from rftfm.bench.presets import preset_runs_table
from rftfm.bench.splits import split_runs
from rftfm.records import RunInfo
from rftfm.testing import OnsetAlarm, RollbackOnly


def probe(payload: dict[str, Any]) -> dict[str, Any]:
    """Train the clean twin of one faulty run, parted from it at the onset; returns its accuracy."""
    import torch

    from rftfm.bench.runner import build_trainer, quiet
    from rftfm.engine.policy_eval import eval_accuracy
    from rftfm.fm.loop import ControllerConfig
    from rftfm.integrations.trl_callback import RFTFMCallback

    quiet()
    torch.set_num_threads(1)
    info = RunInfo.model_validate(payload)
    with tempfile.TemporaryDirectory(prefix="rftfm-ceiling-") as tmp:
        trainer = build_trainer(ev.clean_twin(info), [], output_dir=tmp)
        trainer.replay_last_batches = lambda steps: 0  # continue on fresh batches: randomness parts at the onset
        callback = RFTFMCallback.attach(
            trainer,
            detector=OnsetAlarm(info.onset_step or 1),
            diagnoser=None,
            remediator=RollbackOnly(),
            checkpoint_dir=os.path.join(tmp, "ckpt"),
            config=ControllerConfig(rollback_needs_regression=False),
        )
        trainer.train()
        accuracy = eval_accuracy(trainer.model, trainer.task, trainer.task.eval_problems(ev.FINAL_EVAL_PROMPTS))
    rollbacks = callback.controller.counts["rollbacks"] if callback.controller is not None else 0
    return {"run_id": info.run_id, "accuracy": accuracy, "rollbacks": rollbacks, "steps": trainer.state.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--from", dest="source", required=True, help="an earlier `bench evaluate remediation --json` (clean accuracies)"
    )
    parser.add_argument(
        "--preset",
        default="classic",
        help="the preset whose runs the summary holds (classic: the earlier evaluations' full preset)",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", dest="json_out", type=Path)
    args = parser.parse_args()
    summary = json.loads(Path(args.source).read_text(encoding="utf-8"))
    pairs = {p["run_id"]: p for p in summary["pairs"] if p["knob_repairable"]}
    runs = split_runs(preset_runs_table(args.preset), "seed")[1]
    faulty, _ = ev.select_runs(runs, None, 0, None)
    chosen = [r for r in faulty if r.run_id in pairs]
    rows = []
    for row in run_in_pool(probe, [(r.model_dump(mode="json"),) for r in chosen], args.workers):
        pair = pairs[row["run_id"]]
        rows.append(
            {
                **row,
                "setting": pair["setting"],
                "onset_step": pair["onset_step"],
                "clean_accuracy": pair["clean_accuracy"],
                "ratio": row["accuracy"] / pair["clean_accuracy"] if pair["clean_accuracy"] else None,
                "passes": row["accuracy"] >= ev.TOLERANCE * pair["clean_accuracy"],
                "loop_success": pair["loop_success"],
            }
        )
    text = report(rows, args.source)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1), encoding="utf-8")


def report(rows: list[dict[str, Any]], source: str) -> str:
    lines = [
        "# The noise floor of the repair criterion",
        "",
        f"Written by `python scripts/repair_ceiling.py --from {source} ...` (see the script's docstring): for every "
        "knob-repairable faulty run of that evaluation, its clean twin with one rollback one step after the onset, "
        "continued on fresh batches (as good as the clean run in expectation; its randomness parts at the onset), "
        f"scored against the clean twin's own run by the repair criterion (accuracy >= {ev.TOLERANCE:.0%} of clean).",
        "",
        "| setting | onset | runs | parted-at-onset clean run passes_% | 95 % CI | ratio sd | loop_repair_% (that "
        "evaluation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in ("easy", "hard"):
        for onset in ("all", 1, 10):
            group = [r for r in rows if r["setting"] == setting and (onset == "all" or r["onset_step"] == onset)]
            if not group:
                continue
            passes = sum(r["passes"] for r in group)
            lo, hi = ev.wilson_interval(passes, len(group))
            ratios = [r["ratio"] for r in group if r["ratio"] is not None]
            mean = sum(ratios) / len(ratios)
            sd = (sum((x - mean) ** 2 for x in ratios) / max(len(ratios) - 1, 1)) ** 0.5
            loop = 100 * sum(r["loop_success"] for r in group) / len(group)
            lines.append(
                f"| {setting} | {onset} | {len(group)} | {100 * passes / len(group):.1f} | {lo:.1f}-{hi:.1f} "
                f"| {sd:.3f} | {loop:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
