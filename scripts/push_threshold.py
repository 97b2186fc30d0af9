"""The push threshold on user-run learning-rate spikes: the first alarm after the push, with the detector's
threshold left at 1 and halved while the push is in effect (``ControllerConfig.push_alarm_threshold``), and the
largest score between the push and 10 steps later with the threshold at 1 (before any rollback).

Runs of :mod:`rftfm.testing.user_run` (a plain ``GRPOTrainer`` subclass, a task and model outside the benchmark),
the loop on (train-side metrics), the shipped detector and diagnoser. The threshold was chosen on seeds 300 and 301
(onsets 30 and 50); the reported user-run seeds are 100-104 (``scripts/user_run_loop.py``).

    python scripts/push_threshold.py --runs 300:30,301:50,101:40
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import PrinterCallback

from rftfm.bench.runner import quiet
from rftfm.fm.detect import Detector
from rftfm.fm.policy import ControllerConfig
from rftfm.integrations.trl_callback import RFTFMCallback
from rftfm.testing import user_run as ur


def first_alarm(seed: int, onset: int, threshold: float) -> tuple[int | None, float]:
    """(first alarm step at or after ``onset``, largest score over ``onset``..``onset + 10``)."""
    detector, scores = Detector.load_default(), {}
    observe = detector.observe

    def recording(record, trajectories=()):
        alarm = observe(record, trajectories)
        scores.setdefault(record.step, detector.last_score)  # a rollback's replayed steps come again: keep the first
        return alarm

    detector.observe = recording
    with tempfile.TemporaryDirectory(prefix="rftfm-push-") as tmp:
        trainer = ur.user_trainer(tmp, steps=80, seed=seed, spike=ur.LRSpike(onset, 30.0))
        trainer.remove_callback(PrinterCallback)
        callback = RFTFMCallback.attach(
            trainer, detector=detector, config=ControllerConfig(push_alarm_threshold=threshold), report=False
        )
        trainer.train()
    alarms = [e["step"] for e in callback.controller.store.events(kind="alarm") if e["step"] >= onset]
    peak = max((s for step, s in scores.items() if onset <= step <= onset + 10 and s is not None), default=float("nan"))
    return (alarms[0] if alarms else None), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="300:30,301:50", help="seed:onset pairs, comma-separated")
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(1)
    print("| seed | onset | first alarm, threshold 1 | largest score in 10 steps, threshold 1 | first alarm, halved |")
    print("|---|---|---|---|---|")
    for pair in args.runs.split(","):
        seed, onset = (int(v) for v in pair.split(":"))
        before, peak = first_alarm(seed, onset, 1.0)
        after, _ = first_alarm(seed, onset, 0.5)
        print(f"| {seed} | {onset} | {before if before is not None else '-'} | {peak:.3f} | "
              f"{after if after is not None else '-'} |", flush=True)


if __name__ == "__main__":
    main()
