"""The one alert-only monitor: detection and diagnosis for one run, fed one step at a time.

``rftfm watch`` (a log file followed from another process) and
:class:`rftfm.integrations.trl_log.WatchCallback` (inside the training process) both run a
:class:`RunMonitor`. It never changes the trainer (the closed loop in :mod:`rftfm.fm.loop`
does that) and never raises because of its input or its components: detector / diagnoser
errors are counted and recorded in the incident store as ``error`` events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rftfm.fm.types import Alarm, Diagnosis
from rftfm.records import StepRecord, TrajectoryRecord

# --- the detector and the diagnoser, when installed -----------------------------------------


def load_detector(path: Path | None = None) -> tuple[Any | None, str | None]:
    """(``Detector.load(path)`` or ``Detector.load_default()``, or None and why not)."""
    try:
        from rftfm.fm.detect import Detector  # written by the detection work (issue 3)
    except ImportError as exc:
        return None, f"detection disabled: rftfm.fm.detect is not available ({exc})"
    try:
        return (Detector.load(path) if path is not None else Detector.load_default()), None
    except Exception as exc:  # missing artifact, bad file: say so, keep reading the log
        return None, f"detection disabled: the default detector failed to load ({type(exc).__name__}: {exc})"


def load_diagnoser(path: Path | None = None) -> tuple[Any | None, str | None]:
    """(``Diagnoser.load(path)`` or ``Diagnoser.load_default()``, or None and why not)."""
    try:
        from rftfm.fm.diagnose import Diagnoser  # written by the diagnosis work (issue 4)
    except ImportError as exc:
        return None, f"diagnosis disabled: rftfm.fm.diagnose is not available ({exc})"
    try:
        return (Diagnoser.load(path) if path is not None else Diagnoser.load_default()), None
    except Exception as exc:
        return None, f"diagnosis disabled: the default diagnoser failed to load ({type(exc).__name__}: {exc})"


# --- one run under watch ----------------------------------------------------------------------


#: A long run keeps only this many alarms / diagnoses / error messages in memory (all are in the store).
KEEP_IN_MEMORY = 1000


@dataclass
class WatchResult:
    """What one watch saw. ``alarms`` / ``diagnoses`` hold the first :data:`KEEP_IN_MEMORY`; counts are exact."""

    run_id: str
    steps: int = 0
    alarm_count: int = 0
    alarms: list[Alarm] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    last_diagnosis: Diagnosis | None = None
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    detection: bool = False


class RunMonitor:
    """Detection + diagnosis for one run, fed one step at a time; records to an incident store.

    ``on_alarm(alarm, diagnosis_or_None, is_new)`` is called for every alarm; ``is_new`` is true
    for the first alarm of an episode (a run of consecutive alarmed steps) and whenever the top
    diagnosis changes: what deserves a notification.
    """

    def __init__(
        self,
        run_id: str,
        detector: Any | None,
        diagnoser: Any | None = None,
        store: Any | None = None,
        on_alarm: Callable[[Alarm, Diagnosis | None, bool], None] | None = None,
        task_group: str | None = None,
        model_size: str | None = None,
        rediagnose_every: int = 5,
        max_history: int = 4096,
    ):
        from rftfm.fm.features import FEATURES, step_features

        self._features, self._feature_names = step_features, FEATURES
        self.run_id, self.detector, self.diagnoser, self.store = run_id, detector, diagnoser, store
        self.on_alarm, self.task_group, self.model_size = on_alarm, task_group, model_size
        self.result = WatchResult(run_id=run_id, detection=detector is not None)
        # The diagnoser's history: the most recent ``max_history`` steps as compact tuples, so a
        # million-step run keeps bounded memory (a diagnosis looks at the recent deviation).
        self._history: deque[tuple[Any, ...]] = deque(maxlen=max(1, max_history))
        self._last_top: tuple[str, str] | None = None
        self._in_episode = False  # the previous step raised an alarm too
        self._episode_alarms = 0
        self.rediagnose_every = max(1, rediagnose_every)
        if detector is not None:
            self._safely("detector.reset", lambda: detector.reset(run_id, task_group=task_group, model_size=model_size))

    def _safely(self, what: str, fn: Callable[[], Any], step: int | None = None) -> Any:
        try:
            return fn()
        except Exception as exc:  # the monitor never crashes on its own components
            message = f"{what} failed at step {step}: {type(exc).__name__}: {exc}"
            self.note_error(message)
            self._record("error", step, {"where": what, "error": message})
            return None

    def note_error(self, message: str) -> None:
        self.result.error_count += 1
        if len(self.result.errors) < KEEP_IN_MEMORY:
            self.result.errors.append(message)

    def _record(self, kind: str, step: int | None, payload: Any) -> None:
        if self.store is None:
            return
        try:
            self.store.record(kind, self.run_id, step, payload)
        except Exception as exc:  # a locked / full disk must not stop the watch
            self.note_error(f"incident store: {exc}")

    def history_frame(self):
        """Features of every step seen so far (``rftfm.fm.features`` rows), as the diagnoser expects."""
        import polars as pl

        schema = {"run_id": pl.Utf8, "step": pl.Int64, **{name: pl.Float64 for name in self._feature_names}}
        return pl.DataFrame(list(self._history), schema=schema, orient="row") if self._history else pl.DataFrame(schema=schema)

    def observe(self, step: StepRecord, trajectories: list[TrajectoryRecord]) -> tuple[Alarm | None, Diagnosis | None]:
        self.result.steps += 1
        row = self._safely("features", lambda: self._features(step, trajectories), step.step) or {}
        self._history.append((self.run_id, step.step, *(row.get(n) for n in self._feature_names)))
        if self.detector is None:
            return None, None
        alarm = self._safely("detector.observe", lambda: self.detector.observe(step, trajectories), step.step)
        if alarm is None:
            self._in_episode = False
            return None, None
        self.result.alarm_count += 1
        if len(self.result.alarms) < KEEP_IN_MEMORY:
            self.result.alarms.append(alarm)
        self._record("alarm", step.step, alarm)
        self._episode_alarms = self._episode_alarms + 1 if self._in_episode else 1
        diagnosis = None
        # Diagnose at the start of an episode, then every ``rediagnose_every`` alarmed steps
        # (the history grows with the run; diagnosing every alarmed step would cost O(steps^2)).
        if self.diagnoser is not None and (self._episode_alarms - 1) % self.rediagnose_every == 0:
            history = self.history_frame()
            diagnosis = self._safely(
                "diagnoser.diagnose",
                lambda: self.diagnoser.diagnose(history, self.run_id, step.step, task_group=self.task_group, model_size=self.model_size),
                step.step,
            )
        top_key = None
        if diagnosis is not None:
            self.result.last_diagnosis = diagnosis
            if len(self.result.diagnoses) < KEEP_IN_MEMORY:
                self.result.diagnoses.append(diagnosis)
            self._record("diagnosis", step.step, diagnosis)
            top = diagnosis.top
            top_key = (top.family, top.fault_type) if top is not None else ("unknown", "unknown")
        is_new = not self._in_episode or (top_key is not None and top_key != self._last_top)
        self._in_episode = True
        if top_key is not None:
            self._last_top = top_key
        if self.on_alarm is not None:
            self._safely("alert", lambda: self.on_alarm(alarm, diagnosis, is_new), step.step)
        return alarm, diagnosis
