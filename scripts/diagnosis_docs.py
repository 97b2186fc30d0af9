"""Write the results section of docs/diagnosis.md from the diagnosis evaluation outputs.

Run after::

    rftfm fit diagnoser --data DIR --out src/rftfm/fm/artifacts/diagnoser.json --split seed
    rftfm bench evaluate diagnosis --data DIR --split seed --json docs/results/diagnosis-seed.json \
        --markdown docs/results/diagnosis-seed.md --image docs/diagnosis_confusion.png
    rftfm bench evaluate diagnosis --data DIR --split task --no-loto --json docs/results/diagnosis-task.json \
        --markdown docs/results/diagnosis-task.md --image docs/results/diagnosis-confusion-task.png
    rftfm bench evaluate diagnosis --data DIR --split size --no-loto --json docs/results/diagnosis-size.json \
        --markdown docs/results/diagnosis-size.md --image docs/results/diagnosis-confusion-size.png
    python scripts/diagnosis_docs.py --data-note "..."

Everything between the ``<!-- results -->`` marker and the end of the file is replaced.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARKER = "<!-- results: written by scripts/diagnosis_docs.py -->"


def status_lines(seed: dict, task: dict) -> list[str]:
    from rftfm.bench.eval_diagnosis import TARGETS

    lines = []
    for name, get, goal in TARGETS:
        value = get(seed)
        met = value is not None and value >= goal
        lines.append(f"- {name}: {100 * value:.1f} % (goal ≥ {100 * goal:.0f} %) — **{'met' if met else 'not met'}**")
    hard = task["diagnoser"]["hard"]["family_accuracy"]
    lines.append(
        f"- held-out task group, family accuracy hard: {100 * hard:.1f} % (goal ≥ 80 %) "
        f"— **{'met' if hard >= 0.8 else 'not met'}**"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-note", default="", help="one sentence on the data the numbers were measured on")
    args = parser.parse_args()
    results = DOCS / "results"
    seed = json.loads((results / "diagnosis-seed.json").read_text())
    task = json.loads((results / "diagnosis-task.json").read_text())
    parts = [MARKER, "", "## Results", ""]
    if args.data_note:
        parts += [args.data_note, ""]
    parts += [
        "Where each target stands (full preset, held-out seeds, diagnosis at alarm time; abstentions count as wrong):",
        "",
    ]
    parts += status_lines(seed, task) + [""]
    for split in ("seed", "task", "size"):
        text = (results / f"diagnosis-{split}.md").read_text()
        # image links in docs/results/*.md are relative to docs/results
        text = text.replace("](../", "](").replace("](diagnosis-confusion-", "](results/diagnosis-confusion-")
        parts += [text.replace("### split", "### Split"), ""]
    page = DOCS / "diagnosis.md"
    head = page.read_text().split(MARKER)[0].rstrip() + "\n\n"
    page.write_text(head + "\n".join(parts).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
