"""The tree passes the linter configured in pyproject.toml (ruff: pycodestyle, pyflakes, isort; 120 columns)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "benchmarks", "scripts"]


def test_ruff_check_is_clean() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed in this interpreter (pip install -e '.[test]' brings it)")
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"ruff check {' '.join(LINTED)} found:\n{done.stdout}{done.stderr}"


def test_no_function_of_the_package_is_over_60_lines() -> None:
    import ast

    long = []
    for path in sorted((ROOT / "src" / "rftfm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_the_loop_controller_stays_under_350_lines() -> None:
    import ast

    tree = ast.parse((ROOT / "src" / "rftfm" / "fm" / "loop.py").read_text(encoding="utf-8"))
    (controller,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Controller"]
    assert controller.end_lineno - controller.lineno + 1 < 350
