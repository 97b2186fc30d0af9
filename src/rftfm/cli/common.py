"""What the commands share: failing with one line, opening stores and logs, the training progress bar."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rftfm.report.console import console

EXIT_OK, EXIT_ALARM, EXIT_BAD_INPUT, EXIT_NO_DETECTION = 0, 1, 2, 3


def fail(message: str) -> NoReturn:
    """One line on the console and exit 2 (bad input or usage): never a traceback."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_BAD_INPUT)


def check_format(fmt: str) -> None:
    from rftfm.io.adapters import FORMATS

    if fmt != "auto" and fmt not in FORMATS:
        fail(f"unknown --format {fmt!r}; expected auto, {', '.join(FORMATS)}")


def open_store(path: Path) -> Any:
    import sqlite3

    from rftfm.fm.incidents import IncidentStore

    try:
        return IncidentStore(path)
    except (sqlite3.Error, OSError) as exc:
        fail(f"cannot open the incident store {path}: {exc}")


def read_run(path: Path, fmt: str, run_id: str | None) -> tuple[list, Any]:
    """Every step of a log file or run directory, or a one-line failure (missing, wrong format, no RL step)."""
    from rftfm.io.adapters import read_log

    check_format(fmt)
    if not path.exists():
        fail(f"{path} does not exist")
    try:
        events, stats = read_log(path, fmt, run_id)
    except (ValueError, OSError) as exc:  # FormatMismatch is a ValueError
        fail(str(exc))
    if not events:
        fail(stats.no_steps_reason(path))
    return events, stats


def progress_columns() -> tuple[Any, ...]:
    """The columns of a training progress bar: what it trains, the bar, done / total, elapsed, remaining."""
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def safe_file_name(run_id: str, suffix: str) -> Path:
    """A file name from a run id that may come from a log line: never a path out of this directory."""
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).lstrip(".") + suffix)


def command_line(ctx: typer.Context) -> str:
    """The running command with every option that differs from its default (``rftfm bench evaluate ...``),
    for the provenance line of a results file: the same command re-runs it."""
    import shlex

    parts = ["rftfm", *ctx.command_path.split()[1:]]  # the program name differs under a test runner
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument" and value is not None:
            parts.append(shlex.quote(str(value)))
        if param.param_type_name != "option" or value is None or value == param.default:
            continue
        if getattr(param, "is_flag", False):
            parts.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)
