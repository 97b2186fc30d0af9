"""The one alert-only monitor: detection and diagnosis for one run, fed one step at a time.

``rftfm watch`` (a log file followed from another process) and
:class:`rftfm.integrations.trl_log.WatchCallback` (inside the training process) both run a
:class:`RunMonitor`. It never changes the trainer (the closed loop in :mod:`rftfm.fm.loop`
does that) and never raises because of its input or its components: detector / diagnoser
errors are counted and recorded in the incident store as ``error`` events.

The detector answers per step; the monitor turns its alarms into **episodes**: an episode
starts at an alarm, carries its diagnosis, and ends once ``quiet_steps`` logged steps in a row
raised none. A person is told when an episode starts, when its diagnosis changes and when it
clears, not at every alarmed step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from rftfm.fm import kl_coefficient
from rftfm.fm.types import Alarm, Diagnosis, Episode, SignalEvidence
from rftfm.records import StepRecord, TrajectoryRecord
from rftfm.signals import scale

#: A long run keeps only this many alarms / diagnoses / episodes / error messages in memory
#: (the counts are exact; every alarm and diagnosis is in the incident store).
KEEP_IN_MEMORY = 1000
#: An episode clears after this many logged steps in a row without an alarm.
QUIET_STEPS = 3
#: When an episode clears, a signal of its evidence has come back when the mean of those quiet steps lies within
#: this share of the alarm's distance from the baseline before it (on the signal's own scale: ratios for a positive
#: magnitude, differences otherwise).
CAME_BACK = 0.5

EpisodeChange = Literal["start", "diagnosis", "clear", "end"]
#: How an episode ended: still alarming at the end of the log, cleared with every judged evidence signal back,
#: cleared with some away from their baseline (:attr:`Episode.lasting`), or cleared without values to judge by.
EpisodeEnd = Literal["open", "came back", "settled", "not judged"]


# --- the detector and the diagnoser, when installed -----------------------------------------


def load_detector(path: Path | None = None) -> tuple[Any | None, str | None]:
    """(the artifact at ``path`` -- a per-configuration one combined with the default -- or the packaged
    default detector, or None and why not)."""
    try:
        from rftfm.fm.detect import Detector, load_artifact
    except ImportError as exc:
        return None, f"detection disabled: rftfm.fm.detect is not available ({exc})"
    try:
        return (load_artifact(path) if path is not None else Detector.load_default()), None
    except Exception as exc:  # missing artifact, bad file: say so, keep reading the log
        return None, f"detection disabled: the default detector failed to load ({type(exc).__name__}: {exc})"


def load_diagnoser(path: Path | None = None) -> tuple[Any | None, str | None]:
    """(``Diagnoser.load(path)`` or ``Diagnoser.load_default()``, or None and why not)."""
    try:
        from rftfm.fm.diagnose import Diagnoser
    except ImportError as exc:
        return None, f"diagnosis disabled: rftfm.fm.diagnose is not available ({exc})"
    try:
        return (Diagnoser.load(path) if path is not None else Diagnoser.load_default()), None
    except Exception as exc:
        return None, f"diagnosis disabled: the default diagnoser failed to load ({type(exc).__name__}: {exc})"


class LazyDiagnoser:
    """A diagnoser loaded at its first use: a run that never alarms never pays for loading it (seconds).

    ``load`` returns ``(diagnoser or None, why not)`` like :func:`load_diagnoser`; when it fails,
    :meth:`diagnose` returns None and :attr:`why` says why.
    """

    def __init__(self, load: Callable[[], tuple[Any | None, str | None]]):
        self._load, self._diagnoser, self.why, self._tried = load, None, None, False

    def load(self) -> Any | None:
        """The diagnoser (loaded now if it was not yet), or None."""
        if not self._tried:
            self._tried = True
            self._diagnoser, self.why = self._load()
        return self._diagnoser

    def diagnose(self, *args: Any, **kwargs: Any) -> Diagnosis | None:
        diagnoser = self.load()
        return None if diagnoser is None else diagnoser.diagnose(*args, **kwargs)


# --- episodes -----------------------------------------------------------------------------------


def diagnosis_key(diagnosis: Diagnosis | None) -> tuple[str, str] | None:
    """(family, type) of a diagnosis' top hypothesis; ("unknown", "unknown") when it abstained."""
    if diagnosis is None:
        return None
    top = diagnosis.top
    return (top.family, top.fault_type) if top is not None else ("unknown", "unknown")


def replaces(new: Diagnosis, current: Diagnosis) -> bool:
    """Whether ``new`` takes the place of ``current`` as an episode's diagnosis: the same cause (refreshed), or a
    cause it is at least as sure of as ``current`` is of its own (an abstention counts as sure of nothing, so it
    never replaces a named cause)."""
    if diagnosis_key(new) == diagnosis_key(current):
        return True
    return new.top is not None and (current.top is None or new.top.probability >= current.top.probability)


def _distance(a: float, b: float, log: bool) -> float:
    return abs(math.log(a / b)) if log else abs(a - b)


def lasting_deviations(
    evidence: Sequence[SignalEvidence], recent: Mapping[str, Sequence[float | None]]
) -> list[SignalEvidence] | None:
    """The evidence signals that have not come back (:data:`CAME_BACK`) in ``recent`` (each signal's values over the
    steps after an episode's last alarm, None where not finite), with their mean there as ``value``; None when no
    signal of the evidence could be judged.

    The detector takes a change that persists as the run's new level and falls silent, so an episode ends either
    because the run recovered or because it settled where the fault left it (a policy collapsed to one-token answers
    stays there). Written by hand: a comparison of three numbers per signal. A signal without a measured baseline,
    or without values in ``recent``, is not judged; one that had stopped being finite has come back once it is again.
    """
    out, judged = [], 0
    for ev in evidence:
        seen = recent.get(ev.signal, ())
        if ev.per_kl:  # its values are the loss per unit of KL: judged on that ratio
            seen = [loss / kl if loss is not None and kl else None
                    for loss, kl in zip(seen, recent.get(kl_coefficient.SIGNALS[1], ()))]
        finite = [float(v) for v in seen if v is not None and math.isfinite(v)]
        if ev.non_finite:
            judged += bool(seen)
            if seen and not finite:
                out.append(ev.model_copy())
            continue
        base, peak = ev.expected, ev.value
        if not finite or not ev.measured or base is None or peak is None:
            continue
        judged += 1
        now = sum(finite) / len(finite)
        log = (ev.per_kl or scale(ev.signal) == "log") and min(base, peak, now) > 0
        away = _distance(peak, base, log)
        if away > 0 and _distance(now, base, log) > CAME_BACK * away:
            out.append(SignalEvidence(
                signal=ev.signal, direction=ev.direction, value=now, expected=base,
                ratio=now / base if base else None, since_step=ev.since_step, per_kl=ev.per_kl,
            ))
    return out if judged else None


def how_it_ended(episode: Episode) -> EpisodeEnd:
    """:data:`EpisodeEnd` of ``episode``."""
    if episode.open:
        return "open"
    if episode.lasting is None:
        return "not judged"
    return "settled" if episode.lasting else "came back"


class EpisodeTracker:
    """Groups per-step alarms into episodes; :meth:`step` says what changed at each step."""

    def __init__(self, run_id: str, quiet_steps: int = QUIET_STEPS):
        self.run_id, self.quiet_steps = run_id, max(1, quiet_steps)
        self.current: Episode | None = None
        self._quiet = 0
        self._recent: list[Mapping[str, float | None]] = []  # the quiet steps' values (when given)

    def step(
        self, step: int, alarm: Alarm | None, values: Mapping[str, float | None] | None = None
    ) -> list[tuple[EpisodeChange, Episode]]:
        """Feed one logged step (its alarm or None, and its signals' values when known: then a cleared episode
        says which of its signals had not come back, :attr:`Episode.lasting`); returns the episode changes it
        caused."""
        changes: list[tuple[EpisodeChange, Episode]] = []
        episode = self.current
        if alarm is None:
            if episode is not None:
                self._quiet += 1
                if values:
                    self._recent.append(values)
                if self._quiet >= self.quiet_steps:
                    episode.open = False
                    if len(self._recent) == self._quiet:  # every quiet step's values known
                        signals = {ev.signal for ev in episode.evidence}
                        if any(ev.per_kl for ev in episode.evidence):
                            signals.update(kl_coefficient.SIGNALS)
                        episode.lasting = lasting_deviations(
                            episode.evidence, {s: [r.get(s) for r in self._recent] for s in signals}
                        )
                    changes.append(("clear", episode))
                    self.current = None
            return changes
        self._quiet = 0
        self._recent = []
        if episode is None:
            self.current = Episode(
                run_id=self.run_id,
                start_step=step,
                end_step=step,
                peak_score=alarm.score,
                evidence=list(alarm.evidence),
            )
            return [("start", self.current)]
        episode.end_step, episode.alarmed_steps = step, episode.alarmed_steps + 1
        if alarm.score > episode.peak_score:
            episode.peak_score, episode.evidence = alarm.score, list(alarm.evidence)
        return changes

    def diagnose(self, diagnosis: Diagnosis) -> bool:
        """Attach a diagnosis to the open episode; True when its top hypothesis changed.

        A later diagnosis of the same episode names another cause only when it is at least as sure of it as the
        episode's diagnosis is of its own (:func:`replaces`): deep into a long episode the detector has taken the
        fault's level as the run's own, and a diagnosis there reads less evidence than the first did."""
        episode = self.current
        if episode is None:
            return False
        if episode.diagnosis is None:
            episode.diagnosis = diagnosis
            return False
        if not replaces(diagnosis, episode.diagnosis):
            return False
        changed = diagnosis_key(diagnosis) != diagnosis_key(episode.diagnosis)
        episode.diagnosis = diagnosis
        return changed

    def finish(self) -> list[tuple[EpisodeChange, Episode]]:
        """End of the log: the open episode (if any) ends still open."""
        if self.current is None:
            return []
        episode, self.current = self.current, None
        return [("end", episode)]


def episodes_of(
    steps: list[int], alarmed: set[int], run_id: str = "run", quiet_steps: int = QUIET_STEPS
) -> list[Episode]:
    """The episodes a run's alarmed steps form (offline, e.g. for a report of recorded alarms)."""
    tracker = EpisodeTracker(run_id, quiet_steps)
    out: list[Episode] = []
    for step in steps:
        alarm = Alarm(run_id=run_id, step=step, score=0.0, threshold=0.0) if step in alarmed else None
        out += [e for kind, e in tracker.step(step, alarm) if kind == "start"]
    return out


# --- one run under watch ----------------------------------------------------------------------


@dataclass
class WatchResult:
    """What one watch saw. Lists hold the first :data:`KEEP_IN_MEMORY` items; counts are exact."""

    run_id: str
    steps: int = 0
    alarm_count: int = 0  # alarmed steps
    alarms: list[Alarm] = field(default_factory=list)
    diagnoses: list[Diagnosis] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    episode_count: int = 0
    first_alarm_step: int | None = None
    last_diagnosis: Diagnosis | None = None
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    detection: bool = False


EpisodeCallback = Callable[[EpisodeChange, Episode], None]
StepCallback = Callable[[StepRecord, "Alarm | None"], None]


class RunMonitor:
    """Detection + diagnosis for one run, fed one step at a time; records to an incident store.

    ``on_episode(change, episode)`` is called when an episode starts, when its diagnosis changes,
    when it clears and (at :meth:`finish`) when the log ends with one open: what deserves a
    notification. ``on_step(step, alarm_or_None)`` is called at every step (a verbose view).
    """

    def __init__(
        self,
        run_id: str,
        detector: Any | None,
        diagnoser: Any | None = None,
        store: Any | None = None,
        on_episode: EpisodeCallback | None = None,
        task_group: str | None = None,
        model_size: str | None = None,
        rediagnose_every: int = 5,
        max_history: int = 4096,
        quiet_steps: int = QUIET_STEPS,
        on_step: StepCallback | None = None,
    ):
        from rftfm.fm.features import HISTORY_SCHEMA, step_features

        self._features, self._feature_names = step_features, tuple(HISTORY_SCHEMA)[2:]
        self.run_id, self.detector, self.diagnoser, self.store = run_id, detector, diagnoser, store
        self.on_episode, self.on_step = on_episode, on_step
        self.task_group, self.model_size = task_group, model_size
        self.result = WatchResult(run_id=run_id, detection=detector is not None)
        self.episodes = EpisodeTracker(run_id, quiet_steps)
        # The diagnoser's history: the most recent ``max_history`` steps as compact tuples, so a
        # million-step run keeps bounded memory (a diagnosis looks at the recent deviation).
        self._history: deque[tuple[Any, ...]] = deque(maxlen=max(1, max_history))
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
        """Features of the steps seen so far (``rftfm.fm.features`` rows), as the diagnoser expects."""
        import polars as pl

        from rftfm.fm.features import HISTORY_SCHEMA as schema

        return (
            pl.DataFrame(list(self._history), schema=schema, orient="row")
            if self._history
            else pl.DataFrame(schema=schema)
        )

    def _notify(self, changes: list[tuple[EpisodeChange, Episode]], step: int | None) -> None:
        for change, episode in changes:
            if change == "start":
                self.result.episode_count += 1
                if len(self.result.episodes) < KEEP_IN_MEMORY:
                    self.result.episodes.append(episode)
            if self.on_episode is not None:
                self._safely("alert", lambda: self.on_episode(change, episode), step)

    def _diagnose(self, step: int) -> Diagnosis | None:
        history = self.history_frame()
        diagnosis = self._safely(
            "diagnoser.diagnose",
            lambda: self.diagnoser.diagnose(
                history, self.run_id, step, task_group=self.task_group, model_size=self.model_size
            ),
            step,
        )
        if diagnosis is not None:
            self.result.last_diagnosis = diagnosis
            if len(self.result.diagnoses) < KEEP_IN_MEMORY:
                self.result.diagnoses.append(diagnosis)
            self._record("diagnosis", step, diagnosis)
        return diagnosis

    def _diagnosis_due(self, n: int) -> bool:
        """Diagnose an episode's alarmed step ``n`` (0-based) at 0, k, 2k, 4k, 8k, ...: a long episode is
        diagnosed O(log length) times (each diagnosis reads the whole recent history)."""
        k = self.rediagnose_every
        return n == 0 or (n % k == 0 and ((n // k) & (n // k - 1)) == 0)

    def observe(self, step: StepRecord, trajectories: list[TrajectoryRecord]) -> tuple[Alarm | None, Diagnosis | None]:
        """One logged step: (its alarm or None, the diagnosis made at it or None)."""
        return self.observe_batch([(step, trajectories)])[0]

    def observe_batch(
        self, events: list[tuple[StepRecord, list[TrajectoryRecord]]]
    ) -> list[tuple[Alarm | None, Diagnosis | None]]:
        """Several logged steps in order (a log read at once): the detector scores them together when it can."""
        rows = [self._safely("features", lambda: self._features(s, t), s.step) or {} for s, t in events]
        alarms = self._detect(events, rows)
        return [self._after(step, row, alarm) for (step, _), row, alarm in zip(events, rows, alarms)]

    def _detect(self, events: list[tuple[StepRecord, list[TrajectoryRecord]]], rows: list[dict]) -> list[Alarm | None]:
        if self.detector is None or not events:
            return [None] * len(events)
        many = getattr(self.detector, "observe_many", None)
        if many is not None:
            scored = self._safely("detector.observe", lambda: many(self.run_id, [(s.step, r) for (s, _), r in
                                                                                 zip(events, rows)]), events[0][0].step)
            if scored is not None:
                return scored
            return [None] * len(events)
        return [self._safely("detector.observe", lambda: self.detector.observe(s, t), s.step) for s, t in events]

    def _after(self, step: StepRecord, row: dict, alarm: Alarm | None) -> tuple[Alarm | None, Diagnosis | None]:
        """History, episodes, diagnosis and notifications of one scored step (in log order, so a diagnosis
        reads the history up to its step)."""
        self.result.steps += 1
        self._history.append((self.run_id, step.step, *(row.get(n) for n in self._feature_names)))
        if self.on_step is not None:
            self._safely("alert", lambda: self.on_step(step, alarm), step.step)
        changes = self.episodes.step(step.step, alarm, row)
        if alarm is None:
            self._notify(changes, step.step)
            return None, None
        self.result.alarm_count += 1
        if self.result.first_alarm_step is None:
            self.result.first_alarm_step = step.step
        if len(self.result.alarms) < KEEP_IN_MEMORY:
            self.result.alarms.append(alarm)
        self._record("alarm", step.step, alarm)
        episode = self.episodes.current
        diagnosis = None
        if self.diagnoser is not None and episode is not None and self._diagnosis_due(episode.alarmed_steps - 1):
            diagnosis = self._diagnose(step.step)
            if diagnosis is not None and self.episodes.diagnose(diagnosis):
                changes.append(("diagnosis", episode))
        self._notify(changes, step.step)
        return alarm, diagnosis

    def finish(self) -> None:
        """End of the log: an episode still open is reported as such."""
        self._notify(self.episodes.finish(), None)
