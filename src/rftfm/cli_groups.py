"""Typer sub-apps shared by several CLI modules.

``fit_app`` holds ``rftfm fit detector|diagnoser``; ``evaluate_app`` holds
``rftfm bench evaluate detection|diagnosis``. Command modules import these and add
commands; ``rftfm.cli`` mounts them once.
"""

from __future__ import annotations

import typer

fit_app = typer.Typer(help="Train RFT-FM models from a benchmark directory.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate RFT-FM components on a benchmark split.", no_args_is_help=True)
