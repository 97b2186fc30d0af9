"""The ``rftfm`` command line: argument parsing and printing only (the work is in the library)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``from rftfm.cli import app`` without importing every command module for ``rftfm.cli.watch``."""
    if name == "app":
        from rftfm.cli.main import app

        return app
    raise AttributeError(name)
