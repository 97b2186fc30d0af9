"""Write the loop's playbook (``rftfm.fm.playbook.PLAYBOOK``: each fault type's ladder of rungs) as the Markdown table
docs/remediation.md embeds (docs/results/playbook.md; then ``python scripts/docs_results.py``).

    python scripts/playbook_table.py [--out docs/results/playbook.md] [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rftfm.bench.eval_remediation import playbook_markdown

DEFAULT = Path(__file__).resolve().parent.parent / "docs" / "results" / "playbook.md"


def table() -> str:
    return f"Written by `python scripts/playbook_table.py`.\n\n{playbook_markdown().rstrip()}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the playbook")
    args = parser.parse_args()
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == table()
        print(f"{args.out}: {'up to date' if same else 'differs from the playbook'}")
        return 0 if same else 1
    args.out.write_text(table(), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
