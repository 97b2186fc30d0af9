"""``rftfm watch``: follow a run's log, detect, diagnose, alert once per alarm episode.

Exit codes (documented in ``docs/integrations/jsonl.md``):

* 0 — the log was read and no alarm was raised;
* 1 — at least one alarm was raised;
* 2 — bad input or usage (path missing, unknown or contradicted format, no RL training step found);
* 3 — the log was read but detection is unavailable (no detector installed or it failed to load).

The watcher never raises into the caller because of a log line: malformed lines are counted,
detector / diagnoser errors are recorded in the incident store as ``error`` events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.markup import escape

from rftfm.cli.common import EXIT_ALARM, EXIT_BAD_INPUT, EXIT_NO_DETECTION, EXIT_OK, check_format, fail, open_store
from rftfm.fm.detect import WINDOWED_FROM_RECORD
from rftfm.fm.monitor import LazyDiagnoser, RunMonitor, WatchResult, load_detector, load_diagnoser
from rftfm.fm.schedule import jumps_by_design
from rftfm.report.console import console, print_episode, print_step
from rftfm.report.summary import input_problems, watch_summary

if TYPE_CHECKING:
    from rftfm.cli.main import Apps

__all__ = ["EXIT_ALARM", "EXIT_BAD_INPUT", "EXIT_NO_DETECTION", "EXIT_OK", "exit_code", "watch"]


def exit_code(result: WatchResult) -> int:
    """The watch's exit code (see the module docstring)."""
    if result.alarm_count:
        return EXIT_ALARM
    if result.steps == 0:
        return EXIT_BAD_INPUT
    return EXIT_OK if result.detection else EXIT_NO_DETECTION


def _open_source(
    path: Path, fmt: str, run_id: str | None, follow: bool, interval: float, idle_timeout: float | None, quiet: bool
) -> Any:
    """The run's LogSource; when following, wait for a directory's log to appear (a run just starting)."""
    from rftfm.io.adapters import LogSource

    start, told = time.monotonic(), False
    while True:
        try:
            if follow and not path.exists() and path.suffix == "":  # maybe a run directory still to be created
                raise ValueError(f"{path} does not exist")
            return LogSource(path, fmt, run_id)
        except (ValueError, OSError) as exc:
            if not follow or (idle_timeout is not None and time.monotonic() - start >= idle_timeout):
                fail(str(exc))
            if not told and not quiet:
                console.print(f"[dim]waiting for a log at {escape(str(path))}…[/]")
                told = True
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                fail(f"interrupted while waiting for {path}")


def _print_summary(result: WatchResult, stats: Any, path: Path) -> None:
    alarms = f"{result.alarm_count} alarmed step(s) in {result.episode_count} episode(s)"
    if result.first_alarm_step is not None:
        alarms += f", first at step {result.first_alarm_step}"
    settled = sum(1 for e in result.episodes if e.lasting)
    if settled:
        alarms += f"; {settled} ended with the run settled away from its earlier level"
    summary = f"{result.steps} step(s) [{stats.described}], {alarms}"
    if result.error_count:
        summary += f", {result.error_count} monitor error(s) recorded"
    console.print(f"[bold]summary[/]: {escape(summary)}")
    for line in input_problems(stats):
        console.print(f"[yellow]input[/]: {escape(line)}")
    if 0 < result.steps < WINDOWED_FROM_RECORD:
        console.print(f"[yellow]coverage[/]: {result.steps} logged step(s): the checks that compare a window of logged "
                      "steps with the run's earlier ones (level, loss penalty, loss scale) start at a run's "
                      f"{WINDOWED_FROM_RECORD}th logged step, so they judged none of this log (at a record every 10 "
                      f"steps, TRL's default, that is step {10 * WINDOWED_FROM_RECORD})")
    if result.steps == 0:
        console.print(f"[bold red]error:[/] {escape(stats.no_steps_reason(path))}")


ON_POLICY_HELP = (
    "the run trains every optimiser step on rollouts of the current policy (TRL GRPOTrainer defaults: num_iterations "
    "1, steps_per_generation = gradient_accumulation_steps, no vLLM importance-sampling correction), so any clip ratio "
    "above 0 alarms: rollouts from another policy"
)
LR_SCHEDULER_HELP = (
    "the run's lr_scheduler_type, if known: cosine_with_restarts / reduce_lr_on_plateau jump by design, so "
    "learning-rate jumps are not judged"
)
STOCHASTIC_REWARD_HELP = (
    "the reward is meant to score one completion differently from call to call (a judge sampled at a temperature): "
    "identical completions scored differently are no symptom"
)


def watch(
    path: Path = typer.Argument(..., help="log file (JSONL, CSV, console log, trainer_state.json, TensorBoard) "
                                "or run directory"),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | openrlhf | verl | trl | jsonl"),
    incidents: Optional[Path] = typer.Option(None, "--incidents", help="SQLite incident store to record alarms in"),
    follow: bool = typer.Option(False, "--follow/--no-follow", help="keep following the file as it grows (tail -F)"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="run id (default: run_info.json, else the name)"),
    task_group: Optional[str] = typer.Option(None, "--task-group", help="task group, if known"),
    model_size: Optional[str] = typer.Option(None, "--model-size", help="model size, if known"),
    interval: float = typer.Option(0.5, "--interval", min=0.01, help="seconds between polls when following"),
    idle_timeout: Optional[float] = typer.Option(None, "--idle-timeout", help="stop following after this many "
                                                 "seconds without new lines"),
    detector_path: Optional[Path] = typer.Option(None, "--detector", help="detector artifact (default: packaged)"),
    diagnoser_path: Optional[Path] = typer.Option(None, "--diagnoser", help="diagnoser artifact (default: packaged)"),
    use_wandb: bool = typer.Option(False, "--wandb", help="forward alerts with wandb.alert (wandb configured)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print alarm episodes and the summary only"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print every step, alarmed or not"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write a machine-readable summary (JSON) here"),
    lr_scheduler: Optional[str] = typer.Option(None, "--lr-scheduler", help=LR_SCHEDULER_HELP),
    on_policy: bool = typer.Option(False, "--on-policy", help=ON_POLICY_HELP),
    stochastic_reward: bool = typer.Option(False, "--stochastic-reward", help=STOCHASTIC_REWARD_HELP),
) -> None:
    """Follow a run's log, detect anomalies, diagnose them, print alarm episodes and record incidents.

    Exit code: 0 no alarm, 1 alarm raised, 2 bad input or usage, 3 detection unavailable.
    """
    check_format(fmt)
    if not path.exists() and not follow:
        fail(f"{path} does not exist")
    source = _open_source(path, fmt, run_id, follow, interval, idle_timeout, quiet)
    store = open_store(incidents) if incidents is not None else None
    alerter = _wandb_alerter(source.run_id) if use_wandb else None
    monitor = _monitor(source.run_id, detector_path, diagnoser_path, store, alerter, task_group, model_size,
                       follow, verbose, lr_scheduler, on_policy, stochastic_reward)
    if store is not None:
        store.record("run", source.run_id, None,
                     {"source": str(path.resolve()), "format": fmt, "follow": follow, "started": time.time()})
    if not quiet:
        console.print(f"[bold]rftfm watch[/]: {'following' if follow else 'reading'} {escape(str(path))} as run "
                      f"[bold]{escape(source.run_id)}[/]")
    _read(source, monitor, follow, interval, idle_timeout, quiet, verbose, alerter)
    stats, result = source.stats, monitor.result
    if stats.mismatch:
        if store is not None:
            store.close()
        fail(f"{path}: {stats.mismatch}")
    if store is not None:
        store.record("run", source.run_id, None, {
            "finished": time.time(), "steps": result.steps, "alarms": result.alarm_count,
            "episodes": result.episode_count, "format": stats.format, "malformed_lines": stats.malformed_lines})
        store.close()
    if monitor.diagnoser is not None and monitor.diagnoser.why:
        console.print(f"[yellow]{escape(monitor.diagnoser.why)}[/]")
    _print_summary(result, stats, path)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(watch_summary(result, stats, str(path), exit_code(result)), indent=1),
                            encoding="utf-8")
    raise typer.Exit(exit_code(result))


def register(apps: "Apps") -> None:
    """``rftfm watch``."""
    apps.root.command("watch")(watch)


def _wandb_alerter(run_id: str) -> Any:
    from rftfm.integrations.wandb_alerts import WandbAlerter

    alerter, status = WandbAlerter.create(run_id)
    console.print(f"[dim]{escape(status)}[/]")
    return alerter


def _monitor(run_id: str, detector_path: Path | None, diagnoser_path: Path | None, store: Any, alerter: Any,
             task_group: str | None, model_size: str | None, follow: bool, verbose: bool,
             lr_scheduler: str | None = None, on_policy: bool = False,
             stochastic_reward: bool = False) -> RunMonitor:
    """The run's monitor with the packaged (or given) detector and diagnoser, printing episodes."""
    detector, why_no_detector = load_detector(detector_path)
    if why_no_detector:
        console.print(f"[yellow]{escape(why_no_detector)}[/]")
    if detector is not None and hasattr(detector, "know_schedule") and jumps_by_design(lr_scheduler):
        detector.know_schedule(True)
        console.print(f"[dim]{escape(str(lr_scheduler))}: learning-rate jumps are not judged[/]")
    if on_policy and detector is not None:
        detector.know_on_policy(True)
        console.print("[dim]on-policy run: any clip ratio above 0 alarms[/]")
    if stochastic_reward and detector is not None and hasattr(detector, "know_stochastic_reward"):
        detector.know_stochastic_reward(True)
        console.print("[dim]stochastic reward: identical completions scored differently are not judged[/]")

    def load() -> tuple[Any | None, str | None]:
        loaded, why = load_diagnoser(diagnoser_path)
        if loaded is not None and on_policy:
            loaded.know_on_policy(True)
        if loaded is not None and stochastic_reward:
            loaded.know_stochastic_reward(True)
        return loaded, why

    # Following a live run, the diagnoser is ready before the first alarm; reading a finished log,
    # it is loaded only if an alarm needs it (loading takes seconds).
    diagnoser = LazyDiagnoser(load) if detector is not None else None
    if diagnoser is not None and follow:
        diagnoser.load()

    def on_episode(change: str, episode: Any) -> None:
        print_episode(change, episode)
        if alerter is not None and change in ("start", "diagnosis"):
            alerter.alert(episode, change)

    return RunMonitor(run_id, detector, diagnoser, store, on_episode, task_group, model_size,
                      on_step=print_step if verbose else None)


def _read(source: Any, monitor: RunMonitor, follow: bool, interval: float, idle_timeout: float | None, quiet: bool,
          verbose: bool, alerter: Any) -> None:
    """Feed the log to the monitor, batch by batch, until it ends (or the format turns out wrong)."""
    stats, told_format = source.stats, False
    try:
        batches = source.follow(interval, idle_timeout) if follow else iter([source.read_all()])
        for batch in batches:
            if stats.mismatch:
                break
            if not told_format and not quiet and stats.steps:
                console.print(f"[dim]read as {escape(stats.described)}[/]")
                told_format = True
            monitor.observe_batch(batch)
            if follow and not quiet and not verbose and any(step.step % 10 == 0 for step, _ in batch):
                console.print(f"[dim]step {batch[-1][0].step}[/]")
        monitor.finish()
    except KeyboardInterrupt:
        console.print("[dim]interrupted[/]")
    finally:
        source.close()
        if alerter is not None:
            alerter.close()
