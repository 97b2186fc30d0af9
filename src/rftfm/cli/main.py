"""The rftfm command line: one Typer app, every command module registered the same way."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from rftfm.cli import bench, demo, detect, diagnose, report, watch


@dataclass(frozen=True)
class Apps:
    """The command groups a module registers its commands on."""

    root: typer.Typer
    bench: typer.Typer
    fit: typer.Typer
    evaluate: typer.Typer


def build_app() -> typer.Typer:
    """The ``rftfm`` app with every command registered."""
    apps = Apps(
        root=typer.Typer(help="rftfm: failure management for reinforcement fine-tuning.", no_args_is_help=True),
        bench=typer.Typer(help="RFT-FaultBench: generate, inspect and evaluate.", no_args_is_help=True),
        fit=typer.Typer(help="Train RFT-FM models from a benchmark directory.", no_args_is_help=True),
        evaluate=typer.Typer(help="Evaluate RFT-FM components on a benchmark split.", no_args_is_help=True),
    )
    apps.root.add_typer(apps.bench, name="bench")
    apps.root.add_typer(apps.fit, name="fit")
    apps.bench.add_typer(apps.evaluate, name="evaluate")
    for module in (bench, detect, diagnose, watch, report, demo):
        module.register(apps)
    return apps.root


app = build_app()

if __name__ == "__main__":
    app()
