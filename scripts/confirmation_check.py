"""What the calibrated channels' settings do: confirming them over records in a row (rftfm.fm.confirm;
docs/detection.md, stop 57) and the signals the surprise channel reads (``--surprise-reads step|tier``,
``DetectorConfig.surprise_reads``; stop 58).

    python scripts/confirmation_check.py episodes --data /work/data/h31 [--tier a] --calibrate C --consecutive K \
        [--surprise-reads step]
        every held-out configuration fold (split config) fitted as ``rftfm bench evaluate detection`` fits it (the
        calibrated channels' thresholds set on statistics confirmed over C records), scored in the trainer with K:
        each healthy run (normal, control, or faulty before its onset) that alarms, its first alarmed record's
        channel and how many records in a row its first episode lasted; then the headline summaries

    python scripts/confirmation_check.py external --data /work/data/h31 --test /work/data/hw42 \
        --calibrate 2 --consecutive 2 [--tier a] [--surprise-reads step]
        fitted on every run of --data with the channels calibrated on statistics confirmed over --calibrate records,
        scored with --consecutive: the headline summaries on every run of --test (log-only and in the trainer)
"""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl

from rftfm.bench import eval_detection as ed
from rftfm.bench.splits import folds as split_folds
from rftfm.fm import kl_coefficient
from rftfm.fm.detect import CALIBRATED, SURPRISE_READS, Detector, DetectorConfig


class _Recording(Detector):
    """A detector that keeps the channel scores (over their thresholds) of its latest offline scoring."""

    channels: dict[str, np.ndarray] = {}

    def _combine(self, tier, learned, surprise, invariant, jump, shift=0.0, level=0.0, penalty=0.0, scale=0.0):
        scores = self.calibrated_scores(tier, learned, surprise, shift, level, penalty, scale)
        self.channels = dict(zip(CALIBRATED, scores))
        self.channels["fitting-free"] = np.fmax(np.asarray(invariant), np.abs(np.asarray(jump)))
        return super()._combine(tier, learned, surprise, invariant, jump, shift, level, penalty, scale)


def episodes(data: str, tier: str, calibrate: int, consecutive: int, reads: str = SURPRISE_READS[0]) -> None:
    runs, features = ed._load(data)
    lengths, outcomes = [], []
    for name, train, test in split_folds(runs, "config"):
        method = ed.InTrainerMethod(tier)
        method.detector = _Recording(DetectorConfig(consecutive=calibrate, surprise_reads=reads))
        method.fit_frames(train, features, ed.config_groups(train))
        method.detector.config.consecutive = consecutive
        method.set_trainers(test)
        cubes = ed.mask_tier(ed.RunCubes.build(features, test["run_id"].to_list()), tier, method.handed_over)
        scores = method.score(cubes)
        channels = dict(method.detector.channels)
        configured = [method.configured.get(r) for r in cubes.run_ids]
        channels["fitting-free"] = np.fmax(channels["fitting-free"],
                                           np.abs(kl_coefficient.cube_units(cubes.cube, cubes.steps, configured)))
        outcomes.append(ed.run_outcomes(test, cubes, np.nan_to_num(scores, nan=0.0) > 1.0).with_columns(
            fold=pl.lit(name), seconds=pl.lit(0.0)))
        info = {r["run_id"]: r for r in test.iter_rows(named=True)}
        for i, run_id in enumerate(cubes.run_ids):
            r = info[run_id]
            present = cubes.steps[i] > 0
            faulty = r["control_or_fault"] == "fault"
            healthy = present & (cubes.steps[i] < (r["onset_step"] or 1)) if faulty else present
            flags = np.nan_to_num(scores[i], nan=0.0) > 1.0
            if not (flags & healthy).any():
                continue
            first = int(np.argmax(flags & healthy))
            run_length = 0
            while first + run_length < flags.size and flags[first + run_length]:
                run_length += 1
            at = {k: float(np.nan_to_num(v[i, first], nan=0.0)) for k, v in channels.items()}
            channel = max(at, key=at.get)
            lengths.append(run_length)
            print(f"{name:18} {run_id[:60]:60} step {int(cubes.steps[i, first]):3d} {channel:12} "
                  f"{at[channel]:.2f}  first episode {run_length} record(s)")
    print(f"{len(lengths)} fold x healthy runs alarmed; first episode one record long: {sum(n == 1 for n in lengths)}")
    _print_summary(f"{ed.IN_TRAINER}, tier {tier}", ed._summaries(pl.concat(outcomes, how="diagonal_relaxed")),
                   calibrate, consecutive)


def _print_summary(method: str, m: dict, calibrate: int, consecutive: int) -> None:
    fa, mid, step1 = m["false_alarms"], m["mid_run"]["B"]["avg_f1"], m["step1"]["B"]["avg_f1"]
    print(f"{method:22} calibrated over {calibrate}, confirmed over {consecutive}: mid-run F1 "
          f"{mid['easy']:.1f} / {mid['hard']:.1f}, step 1 {step1['easy']:.1f} / {step1['hard']:.1f}, healthy "
          f"{fa['normal_runs_alarmed']}/{fa['normal_runs']}, per 1,000 normal steps "
          f"{fa['per_1000_normal_steps']:.2f}, detected {m['delay']['detected']} of {m['delay']['mid_run_faults']}"
          f" mid-run, median delay {m['delay']['all']['median']}")


def external(data: str, test: str, tier: str, calibrate: int, consecutive: int, reads: str = SURPRISE_READS[0]) -> None:
    runs, features = ed._load(data)
    detector = Detector(DetectorConfig(consecutive=calibrate, surprise_reads=reads))
    detector.fit(runs, features, groups=ed.config_groups(runs), tiers=(tier,))
    detector.config.consecutive = consecutive
    result = ed.evaluate_detection(test, split="all", tiers=(tier,), with_baselines=False, detector=detector,
                                   in_trainer=True)
    for method, m in result["methods"][tier].items():
        _print_summary(method, m, calibrate, consecutive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("episodes", "external"))
    parser.add_argument("--data", required=True)
    parser.add_argument("--test")
    parser.add_argument("--tier", default="a")
    parser.add_argument("--calibrate", type=int, default=2)
    parser.add_argument("--consecutive", type=int, default=2)
    parser.add_argument("--surprise-reads", choices=SURPRISE_READS, default=SURPRISE_READS[0])
    args = parser.parse_args()
    if args.mode == "episodes":
        episodes(args.data, args.tier, args.calibrate, args.consecutive, args.surprise_reads)
    else:
        external(args.data, args.test, args.tier, args.calibrate, args.consecutive, args.surprise_reads)


if __name__ == "__main__":
    main()
