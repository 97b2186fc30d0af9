"""Copy measured results into the docs: every block

    <!-- results: docs/results/detection-config.md -->
    ...
    <!-- /results -->

in docs/*.md (and README.md) is replaced by the current contents of the file it names, which a command wrote
(the file's first line says which). Nothing in such a block is typed by hand.

    python scripts/docs_results.py            # rewrite the blocks
    python scripts/docs_results.py --check    # exit 1 if a block differs from its file
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


LINK = re.compile(r"\]\((?!https?:|/|#)(?P<target>[^)\s]+)\)")


def rebase_links(content: str, source: Path, doc: Path) -> str:
    """Relative links and images of ``source`` made relative to ``doc``, which embeds it."""

    def rebase(match: re.Match) -> str:
        target = (source.parent / match.group("target")).resolve()
        return f"]({os.path.relpath(target, doc.parent.resolve())})"

    return LINK.sub(rebase, content)


def render(text: str, doc: Path) -> str:
    def body(match: re.Match) -> str:
        source = ROOT / match.group("path")
        if source.exists():
            content = rebase_links(source.read_text(encoding="utf-8"), source, doc)
        else:
            content = f"(missing: {match.group('path')})\n"
        return match.group(1) + content.rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(body, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from their files")
    args = parser.parse_args()
    stale = []
    for doc in [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        new = render(text, doc)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    verb = "differ" if args.check else "rewritten"
    print(f"{len(stale)} doc(s) {verb}: " + ", ".join(map(str, stale)) if stale else "docs up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
