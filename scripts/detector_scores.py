"""Stream a detector over stored runs and write every record's score, alarm and features; or compare two such files.

A change meant to leave the detector's decisions as they are (a faster code path) must reproduce them exactly:

    python scripts/detector_scores.py --data /work/data/half --runs 24 --out before.json   # at the old commit
    python scripts/detector_scores.py --data /work/data/half --runs 24 --out after.json    # at the new one
    python scripts/detector_scores.py --compare before.json after.json

The runs are the first ``--runs`` run directories of the benchmark in a fixed shuffled order (seed 0), read as
``rftfm watch`` reads them (trajectories included). ``--compare`` prints the records compared, the alarms that
differ, the largest score difference and the features that differ, and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from rftfm.fm.detect import Detector
from rftfm.fm.features import step_features
from rftfm.io.adapters import read_log


def scores(data: Path, runs: int, detector_path: str | None) -> dict[str, dict[str, list]]:
    detector = Detector.load(detector_path) if detector_path else Detector.load_default()
    paths = sorted(p for p in data.glob("*/*") if p.is_dir() and p.parent.name != "metadata")
    random.Random(0).shuffle(paths)
    out: dict[str, dict[str, list]] = {}
    for path in paths[:runs]:
        events, _ = read_log(path, "auto", None)
        detector.reset(path.name)
        rows = {"scores": [], "features": []}
        for step, trajectories in events:
            features = step_features(step, trajectories)
            alarm = detector.observe_features(path.name, step.step, features)
            rows["scores"].append([detector.last_score, alarm is not None])
            rows["features"].append(features)
        out[path.name] = rows
    return out


def compare(before: dict[str, dict[str, list]], after: dict[str, dict[str, list]]) -> int:
    records = alarms = features = 0
    worst = 0.0
    for run, a in before.items():
        b = after.get(run, {"scores": [], "features": []})
        if len(a["scores"]) != len(b["scores"]):
            print(f"{run}: {len(a['scores'])} records before, {len(b['scores'])} after")
            return 1
        for (s1, x1), (s2, x2) in zip(a["scores"], b["scores"]):
            records += 1
            alarms += x1 != x2
            if s1 is not None and s2 is not None:
                worst = max(worst, abs(s1 - s2))
        for f1, f2 in zip(a["features"], b["features"]):
            features += sum(
                (f1[k] is None) != (f2.get(k) is None) or (f1[k] is not None and abs(f1[k] - f2[k]) > 1e-12)
                for k in f1
            )
    print(f"{records} records of {len(before)} runs: {alarms} alarms differ, largest score difference {worst:.3g}, "
          f"{features} feature values differ")
    return int(bool(alarms or worst or features))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--detector", help="detector artifact (default: the shipped one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text(encoding="utf-8")) for p in args.compare)
        sys.exit(compare(before, after))
    if args.data is None or args.out is None:
        parser.error("give --data and --out, or --compare BEFORE AFTER")
    args.out.write_text(json.dumps(scores(args.data, args.runs, args.detector)), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
