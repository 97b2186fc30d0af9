"""Seed a remediation evaluation's ``--rows`` file with the arms an earlier pass already trained
that a change to the loop cannot alter (clean and no-remediation; see ``REUSABLE_ARMS``).

    python scripts/reuse_rows.py --from docs/results/remediation-seed.json --preset classic --split seed --side test \\
        --out /work/data/rem-eval/pass.rows.jsonl
    rftfm bench evaluate remediation --preset classic --rows /work/data/rem-eval/pass.rows.jsonl ...
    python scripts/reuse_rows.py --from docs/results/remediation-config-tool.json --data DIR --out tool.rows.jsonl

Those arms are deterministic (same seed, same code path): re-training one reproduces its row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rftfm.bench import eval_remediation as ev
from rftfm.bench.presets import preset_runs_table
from rftfm.bench.splits import split_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="an earlier `--json` summary")
    parser.add_argument(
        "--preset",
        default="classic",
        help="the preset whose runs the summary holds (classic: the earlier evaluations' full preset)",
    )
    parser.add_argument("--data", type=Path, help="a benchmark directory whose runs the summary holds (not a preset)")
    parser.add_argument("--split", default="seed")
    parser.add_argument("--side", default="test", choices=("test", "train"))
    parser.add_argument("--arms", default=",".join(ev.REUSABLE_ARMS))
    parser.add_argument(
        "--retime-healthy",
        action="store_true",
        help="leave out the healthy runs' loop-off arms: trained again, the overhead is timed within one pass",
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.data:  # the summary's rows name their runs: any split of the directory holds them
        runs = ev.load_runs(args.data)
    else:
        runs = split_runs(preset_runs_table(args.preset), args.split)[1 if args.side == "test" else 0]
    faulty, healthy = ev.select_runs(runs, None, None, None)
    summary = json.loads(Path(args.source).read_text(encoding="utf-8"))
    rows = ev.rows_from_summary(summary, [*faulty, *healthy], args.arms.split(","), healthy_off=not args.retime_healthy)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as sink:
        for row in rows:
            sink.write(json.dumps(row) + "\n")
    print(f"{len(rows)} rows ({args.arms}) appended to {args.out}")


if __name__ == "__main__":
    main()
