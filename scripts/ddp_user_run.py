"""The closed loop in a 2-process DDP run on the CPU (gloo): every rank must make the same changes.

    torchrun --nproc_per_node 2 scripts/ddp_user_run.py --out /tmp/ddp-clean
    torchrun --nproc_per_node 2 scripts/ddp_user_run.py --out /tmp/ddp-spike --spike 30

Trains the user-run harness (:mod:`rftfm.testing.user_run`: a plain TRL ``GRPOTrainer`` subclass, a tiny
Llama, a counting task) with ``RFTFMCallback.attach``; ``--spike N`` multiplies the learning rate by 30
at step N on every rank (a process change). Each rank writes ``rank-<k>.json`` to ``--out``: the changes
it made with the step they were made at, its final step count and planned length, a checksum of its final
weights, and (rank 0) the loop's summary and the narrative of its incident log. The loop uses the shipped
detector and diagnoser, which know nothing of this task or model; ``--detector after-spike`` a stand-in
that alarms once after the spike (the plumbing, whatever the detector).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch


def checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--spike", type=int, default=None, help="step at which the LR is multiplied by 30")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", choices=("default", "after-spike"), default="default")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.testing import AfterSpike
    from rftfm.testing import user_run as ur

    args.out.mkdir(parents=True, exist_ok=True)
    spike = ur.LRSpike(onset=args.spike, factor=30.0) if args.spike else None
    trainer = ur.user_trainer(args.out / "trainer", steps=args.steps, seed=args.seed, spike=spike, ddp_backend="gloo")
    stand_in = args.detector == "after-spike"
    detector = AfterSpike(args.spike or args.steps) if stand_in else None
    callback = RFTFMCallback.attach(trainer, detector=detector, run_id="ddp-user-run", report=False)
    trainer.train()
    rank = callback.rank
    result = {
        "rank": rank,
        "world": callback.world,
        "changes": callback.synced,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "weights": checksum(trainer.model),
        "setup_error": callback.setup_error,
    }
    if rank == 0:
        result["accuracy"] = ur.accuracy(trainer.model)
        result["summary"] = callback.summary
        result["narrative"] = callback.narrative
    (args.out / f"rank-{rank}.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
