"""How much of a mismatched rollout batch TRL's off-policy sequence masking drops, at each threshold.

    python scripts/opsm_masking.py --data /work/data/h31 [--limit 8] [--thresholds 0.5,0.2,0.05,0.02]

The playbook's first rung for ``rollout_mismatch`` sets TRL's ``off_policy_mask_threshold`` (DeepSeek-V3.2's delta):
a sequence with a negative advantage whose mean per-token KL between the policy that sampled it and the one being
trained exceeds it is left out of the loss (``GRPOTrainer.get_off_policy_mask``). This script trains the
no-remediation arm of ``rollout_mismatch`` runs of ``--data`` whose task is in neither held-out remediation fold
(digits, tool) and, at every step the fault acts, computes that KL for each sequence from the behaviour-policy
log-probs the engine hands TRL and the trained policy's own; it prints, per run and threshold, the share of the
batch's sequences the mask would drop, and the KL's median and 90th percentile. Nothing of the runs' training is
changed: the log-probs are computed beside it, without gradients.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from rftfm.bench import eval_remediation as ev
from rftfm.engine.trainer import RecordingGRPOTrainer

HELD_OUT_TASKS = ("digits", "tool")


def _watch(kls: list[np.ndarray], negative: list[np.ndarray]) -> None:
    """Wrap the engine's batch scoring so that each mismatched batch's per-sequence KL is kept."""
    scored = RecordingGRPOTrainer._generate_and_score_completions

    def wrapped(self: RecordingGRPOTrainer, inputs):  # noqa: ANN001 - the trainer's own signature
        out = scored(self, inputs)
        behaviour = out.get("old_per_token_logps")
        if behaviour is None:  # the fault is not acting at this step
            return out
        ids, mask = out["completion_ids"], out["completion_mask"]
        full_ids = torch.cat([out["prompt_ids"], ids], dim=1)
        full_mask = torch.cat([out["prompt_mask"], mask], dim=1)
        with torch.no_grad():
            trained, _, _ = self._get_per_token_logps_and_entropies(
                self.model, full_ids, full_mask, ids.size(1), batch_size=self.args.per_device_train_batch_size
            )
        per_token = torch.nan_to_num(behaviour - trained, nan=0.0) * mask  # TRL's get_off_policy_mask
        kls.append((per_token.sum(1) / mask.sum(1).clamp(min=1.0)).float().numpy())
        negative.append((out["advantages"].view(-1) < 0).numpy())
        return out

    RecordingGRPOTrainer._generate_and_score_completions = wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--thresholds", default="0.5,0.2,0.05,0.02")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    faulty, _ = ev.select_runs(ev.load_runs(args.data), None, None, None)
    runs = [r for r in faulty if r.fault_type == "rollout_mismatch" and r.task_group not in HELD_OUT_TASKS]
    kls: list[np.ndarray] = []
    negative: list[np.ndarray] = []
    _watch(kls, negative)
    print(f"Written by `python scripts/opsm_masking.py --data {args.data} --limit {args.limit} --thresholds "
          f"{args.thresholds}`: the share of each run's sequences (every step the fault acts) that TRL's off-policy "
          "sequence mask drops at each threshold (a negative advantage and a mean per-token KL above it).\n")
    columns = " | ".join(f"dropped at {t:g}" for t in thresholds)
    print(f"| run | setting | sequences | KL median | KL p90 | {columns} |")
    print("|---|---|---|---|---|" + "---|" * len(thresholds))
    for info in runs[: args.limit]:
        kls.clear()
        negative.clear()
        ev.run_arm(info, "none")
        if not kls:
            print(f"| {info.run_id} | {info.fault_strength} | 0 | | | " + " | ".join("" for _ in thresholds) + " |")
            continue
        kl, neg = np.concatenate(kls), np.concatenate(negative)
        dropped = [f"{100 * float(np.mean(neg & (kl > t))):.1f} %" for t in thresholds]
        print(f"| {info.run_id} | {info.fault_strength} | {kl.size} | {np.median(kl):.4f} | "
              f"{np.quantile(kl, 0.9):.4f} | " + " | ".join(dropped) + " |", flush=True)


if __name__ == "__main__":
    main()
