"""The RFT-FM closed loop: observe -> detect -> diagnose -> remediate -> revalidate.

:class:`Controller` watches one run step by step. It keeps periodic checkpoints while the
run is healthy; on an alarm it asks the diagnoser, takes the remediator's rung (rollback to
the last checkpoint before the first deviating step, knob changes, halt), then revalidates
over ``revalidate_steps`` steps: no new alarm -> *kept*; alarm, or eval accuracy well below
the checkpoint's -> *escalated* to the next rung; a rung whose actions fail to apply has its
knob changes *reverted*.

It acts on the trainer only through :class:`TrainerHandle` (the trainer knobs of
:mod:`rftfm.engine.knobs`, the checkpoint, the trainer's stop flag and backups the user
registered). Every alarm, diagnosis, action, outcome and internal error goes to the
incident store. An exception in any stage is recorded as an ``error`` incident and never
reaches the trainer; the controller then degrades to alert-only (it keeps detecting,
diagnosing and recording, but no longer acts).
"""

from __future__ import annotations

from collections import deque

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import polars as pl

from rftfm.engine.knobs import KNOBS, configured_lr, get_knob, set_knob
from rftfm.fm.checkpoint import CheckpointError, Checkpointer, CheckpointInfo
from rftfm.fm.features import FEATURES, step_features
from rftfm.fm.incidents import MemoryIncidentStore
from rftfm.fm.playbook import UPSTREAM_SIGNALS, ends_in_halt_only
from rftfm.fm.remediate import Capabilities, Plan, Remediator
from rftfm.fm.types import Action, Alarm, Diagnosis, Outcome
from rftfm.records import StepRecord, TrajectoryRecord

Mode = Literal["watching", "revalidating", "alert_only", "halted"]
MAX_ERROR_RECORDS = 20  # per run; later errors are only counted


class DetectorLike(Protocol):
    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None: ...
    def observe(self, step_record: StepRecord, trajectories: list[TrajectoryRecord]) -> Alarm | None: ...


class DiagnoserLike(Protocol):
    def diagnose(self, history: pl.DataFrame, run_id: str, step: int, task_group: str | None = None,
                 model_size: str | None = None) -> Diagnosis: ...


class StoreLike(Protocol):
    def record(self, kind: str, run_id: str, step: int | None, payload: Any) -> Any: ...


class TrainerHandle:
    """Everything the loop may do to a live trainer, and nothing else.

    Built from a full trainer object (all :data:`~rftfm.engine.knobs.KNOBS` it supports), or
    from the ``model`` / ``optimizer`` / ``lr_scheduler`` / ``control`` a TRL callback receives
    (then only the learning rate, rollback and halt are available).
    """

    def __init__(self, trainer: Any = None, *, model: Any = None, optimizer: Any = None, scheduler: Any = None,
                 control: Any = None, state: Any = None, backup_verifier: Callable[..., list[float]] | None = None,
                 backup_tool: Callable[..., Any] | None = None):
        self.trainer = trainer
        self._model, self._optimizer, self._scheduler, self.control = model, optimizer, scheduler, control
        self._state = state
        self.backup_verifier, self.backup_tool = backup_verifier, backup_tool

    @property
    def model(self) -> Any:
        return self.trainer.model if self.trainer is not None else self._model

    @property
    def optimizer(self) -> Any:
        return getattr(self.trainer, "optimizer", None) if self.trainer is not None else self._optimizer

    @property
    def scheduler(self) -> Any:
        return getattr(self.trainer, "lr_scheduler", None) if self.trainer is not None else self._scheduler

    @property
    def state(self) -> Any:
        return getattr(self.trainer, "state", None) if self.trainer is not None else self._state

    def update(self, model: Any = None, optimizer: Any = None, scheduler: Any = None, control: Any = None,
               state: Any = None) -> None:
        self._model = model if model is not None else self._model
        self._optimizer = optimizer if optimizer is not None else self._optimizer
        self._scheduler = scheduler if scheduler is not None else self._scheduler
        self.control = control if control is not None else self.control
        self._state = state if state is not None else self._state

    def extend(self, steps: int) -> int:
        """Train ``steps`` more optimiser steps than planned (the trainer's ``max_steps``), as a resume
        from a checkpoint does: the steps a rollback discarded are trained again. Returns the steps
        added (0 when the trainer's state is out of reach). The trainer stops early anyway when its
        data runs out."""
        state = self.state
        if steps <= 0 or state is None or not isinstance(getattr(state, "max_steps", None), int):
            return 0
        state.max_steps += steps
        return steps

    def rewind_data(self, steps: int) -> int:
        """Feed the prompt batches of the last ``steps`` steps again before new ones, as a resume from
        a checkpoint does (the embedded engine's ``replay_last_batches``). Returns the batches queued:
        0 for a trainer that cannot (it goes on with its next batches)."""
        replay = getattr(self.trainer, "replay_last_batches", None)
        return int(replay(steps)) if callable(replay) and steps > 0 else 0

    def knob_names(self) -> list[str]:
        return list(self.knobs())

    def capabilities(self) -> Capabilities:
        backups = {k for k, v in (("verifier", self.backup_verifier), ("tool", self.backup_tool)) if v is not None}
        if "tool" in backups and not hasattr(self.trainer, "tool"):
            backups.discard("tool")  # the trainer exposes no tool slot to switch
        return Capabilities(knobs=frozenset(self.knob_names()), rollback=self.model is not None,
                            halt=self.control is not None or self.trainer is not None, backups=frozenset(backups))

    def knobs(self) -> dict[str, Any]:
        """Every knob this trainer can read and set, with its value (one pass: the loop reads them each step)."""
        if self.trainer is None:
            return {"learning_rate": self.get("learning_rate")} if self._optimizer is not None else {}
        values: dict[str, Any] = {}
        for name in KNOBS:
            if name == "beta" and getattr(self.trainer, "ref_model", None) is None:
                continue  # beta > 0 needs a reference model this trainer does not have
            try:
                values[name] = get_knob(self.trainer, name)
            except Exception:
                continue
        return values

    def get(self, name: str) -> Any:
        if self.trainer is not None:
            return get_knob(self.trainer, name)
        if name == "learning_rate" and self._optimizer is not None:
            return configured_lr(self._optimizer, self._scheduler)
        raise KeyError(f"knob {name!r} is not available on this trainer")

    def set(self, name: str, value: Any) -> None:
        if self.trainer is not None:
            set_knob(self.trainer, name, value)
        elif name == "learning_rate" and self._optimizer is not None:
            for group in self._optimizer.param_groups:
                group["lr"] = float(value)
            if self._scheduler is not None and hasattr(self._scheduler, "base_lrs"):
                self._scheduler.base_lrs = [float(value) for _ in self._scheduler.base_lrs]
        else:
            raise KeyError(f"knob {name!r} is not available on this trainer")

    def halt(self) -> None:
        control = self.control if self.control is not None else getattr(self.trainer, "control", None)
        if control is None:
            raise RuntimeError("this trainer exposes no control object to stop it")
        control.should_training_stop = True

    def switch_backup(self, kind: str) -> None:
        if kind == "verifier" and self.backup_verifier is not None:
            funcs = getattr(self.trainer, "reward_funcs", None)
            if not funcs:
                raise RuntimeError("trainer has no reward_funcs to switch")
            funcs[0] = self.backup_verifier
        elif kind == "tool" and self.backup_tool is not None:
            self.trainer.tool = self.backup_tool
        else:
            raise RuntimeError(f"no backup {kind} registered")


@dataclass
class Incident:
    """One open incident: from the first alarm to kept / halted."""

    start_step: int
    first_deviation: int
    rollback_before: int
    plan: Plan | None = None
    applied_at: int = 0
    window: list[tuple[int, float | None]] = field(default_factory=list)  # (step, eval accuracy)
    reference_accuracy: float | None = None
    changed: list[Action] = field(default_factory=list)


@dataclass
class ControllerConfig:
    checkpoint_every: int = 2
    keep_checkpoints: int = 6
    revalidate_steps: int = 3
    remediate: bool = True  # False: alert-only from the start (the "no remediation" arm)
    revert_drop: float = 0.2  # escalate when the window's eval accuracy is this far below the checkpoint's
    default_lookback: int = 2  # first deviating step = alarm step - lookback when evidence has no since_step
    max_lookback: int = 4  # ... and never more than this many steps before the first alarm
    rollout_lag: int = 1  # a step's rollouts come from the weights of the update before it: the weights
    # that generated the first deviating rollout are already suspect, so roll back this many steps further
    reset_detector_after_action: bool = True
    confirm_alarms: int = 2  # act once this many alarms fell within the last confirm_window steps ...
    confirm_window: int = 3
    strong_alarm: float = 2.0  # ... or at once when score >= strong_alarm x threshold
    unknown_confirm_alarms: int = 3  # an alarm nobody can explain (no diagnosis, no knob drift) needs
    unknown_confirm_window: int = 4  # this many alarms within this many steps before the loop acts
    max_history: int = 4096  # per-step state kept (diagnoser history, accuracies): bounded memory on long runs
    rollback_needs_regression: bool = True  # a knob rung rolls back only when eval accuracy fell since the checkpoint
    regression_margin: float = 0.03  # ... by more than this (absolute); unknown accuracy: roll back
    saturated_accuracy: float = 0.98  # ... or when it sits at this ceiling (where it cannot fall) and the rollback can be replayed
    peak_drop: float = 0.1  # ... or when it lies this far below its best since the checkpoint (2-step means): the
    # progress a rollback would discard is already lost (a run still learning fast can fall and stay above an old checkpoint)
    explain_min_z: float = 2.0  # evidence weaker than this |z| does not stop an alarm being "explained"
    halt_needs_regression: bool = True  # a knob ladder's final halt only when eval accuracy fell since the checkpoint
    drift_window: int = 12  # a knob change (not made by the loop) this many steps before an incident is drift to undo
    replay_rollbacks: bool = True  # after a rollback, extend the run by the steps it discarded (resume semantics) ...
    max_replay_fraction: float = 0.5  # ... up to this fraction of the planned steps in all


def _trim_oldest(table: dict[int, Any], size: int) -> None:
    """Drop the oldest entries (dicts keep insertion order) so per-step tables stay bounded."""
    while len(table) > size:
        table.pop(next(iter(table)))


class Controller:
    """The closed loop for one run; feed it with :meth:`observe` once per step."""

    def __init__(self, detector: DetectorLike, diagnoser: DiagnoserLike | None, remediator: Remediator | None = None,
                 store: StoreLike | None = None, checkpointer: Checkpointer | None = None, *, run_id: str,
                 task_group: str | None = None, model_size: str | None = None,
                 config: ControllerConfig | None = None):
        self.detector, self.diagnoser = detector, diagnoser
        self.remediator = remediator or Remediator()
        self.store = store if store is not None else MemoryIncidentStore()
        self.config = config or ControllerConfig()
        self.checkpointer = checkpointer or Checkpointer(keep=self.config.keep_checkpoints)
        self.run_id, self.task_group, self.model_size = run_id, task_group, model_size
        self.handle: TrainerHandle | None = None
        self.mode: Mode = "watching" if self.config.remediate else "alert_only"
        self.history: deque[dict[str, Any]] = deque(maxlen=self.config.max_history)
        self.incident: Incident | None = None
        self.accuracy_at: dict[int, float | None] = {}
        self.checkpoints: list[CheckpointInfo] = []
        self.repaired_type: str | None = None  # diagnosed type of the last applied knob rung
        # after a knob pushed mid-run was undone: the incident's own deviations (signal, direction),
        # which linger while the run catches up, and the eval accuracy it must not fall below
        self.lag_signature: frozenset[tuple[str, str]] = frozenset()
        self.lag_accuracy: float | None = None
        self.recent_evidence: deque[tuple[int, frozenset[tuple[str, str]]]] = deque(maxlen=16)
        self.loop_knobs: dict[str, Any] = {}  # knob values the loop itself set
        self.counts = {"alarms": 0, "explained_alarms": 0, "diagnoses": 0, "actions": 0, "interventions": 0, "rollbacks": 0, "errors": 0,
                       "checkpoints": 0}
        # bounded like the history: the incident store keeps everything, these are for displays and rules
        self.outcomes: deque[Outcome] = deque(maxlen=self.config.max_history)
        self.timeline: deque[tuple[int, str, str]] = deque(maxlen=self.config.max_history)  # (step, kind, text)
        self.monitor_seconds = 0.0
        self.last_step = 0
        self.alarm_steps: deque[int] = deque(maxlen=64)  # the confirmation rules look a few steps back only
        self.ceilings: dict[str, float] = {}  # knobs the loop never raises past: the LR the user configured
        self.max_steps: int | None = None  # the run's length (planned + replayed), when the trainer says it
        self.planned_steps: int | None = None
        self.replayed = 0  # steps added to the run to train again what rollbacks discarded
        self.offset = 0  # real step - effective step (grows with every rollback)
        self.seen_knobs: dict[str, Any] = {}  # knob values read at the last step
        self.knob_changes: dict[str, tuple[int, Any]] = {}  # knob -> (step, value before) of changes the loop did not make
        self.effective_at: dict[int, int] = {0: 0}

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, handle: TrainerHandle, step: int = 0, checkpoint: bool = True) -> None:
        """Bind the trainer and take the initial checkpoint (never raises). ``checkpoint=False``
        leaves it to :meth:`initial_checkpoint`, for a caller that can take it right before the
        first step (where every later checkpoint's RNG state also stands: before a step's rollouts)."""
        t0 = time.perf_counter()
        self.handle = handle
        self._guard("detect", lambda: self.detector.reset(self.run_id, self.task_group, self.model_size))
        self.remediator.reset()
        configured = self._guard("knobs", handle.knobs) or {}
        self.ceilings = {k: configured[k] for k in ("learning_rate",) if isinstance(configured.get(k), (int, float))}
        self.planned_steps = self.max_steps
        self.seen_knobs = dict(configured)
        self._record("run", step, {"event": "start", "mode": self.mode, "capabilities": _caps_json(handle.capabilities())})
        self.monitor_seconds += time.perf_counter() - t0
        if checkpoint:
            self.initial_checkpoint(step)

    def initial_checkpoint(self, step: int) -> None:
        """The checkpoint a rollback to the start of the run restores (never raises)."""
        t0 = time.perf_counter()
        if self.config.remediate:
            self._guard("checkpoint", lambda: self._checkpoint(step))
        self.monitor_seconds += time.perf_counter() - t0

    def finish(self) -> dict[str, Any]:
        summary = self.summary()
        self._record("run", self.last_step, {"event": "end", **summary})
        return summary

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.counts, "monitor_seconds": round(self.monitor_seconds, 4),
                "outcomes": [o.result for o in self.outcomes]}

    # --- the loop ------------------------------------------------------------------------------
    def observe(self, record: StepRecord, trajectories: list[TrajectoryRecord]) -> None:
        """One step of the loop. Never raises."""
        t0 = time.perf_counter()
        try:
            self._observe(record, trajectories)
        except Exception as exc:  # last line of defence: the trainer must not see it
            self._error("loop", record.step, exc)
        finally:
            self.monitor_seconds += time.perf_counter() - t0

    def _observe(self, record: StepRecord, trajectories: list[TrajectoryRecord]) -> None:
        step = record.step
        self.last_step = step
        if self.mode == "halted":
            return
        self.accuracy_at[step] = record.eval_accuracy
        _trim_oldest(self.accuracy_at, self.config.max_history)
        if self.mode in ("watching", "revalidating"):
            self._guard("knobs", lambda: self._track_knobs(step))
        # Detector and diagnoser see the *effective* run: after a rollback to a checkpoint of
        # effective step c, the next step is c + 1 (their normal profiles are indexed by step).
        effective = step - self.offset
        self.effective_at[step] = effective
        _trim_oldest(self.effective_at, self.config.max_history)
        feats = self._guard("features", lambda: step_features(record, trajectories))
        if feats is not None:
            self.history.append({"run_id": self.run_id, "step": effective, **feats})
        seen = record if effective == step else record.model_copy(update={"step": effective})
        ok, alarm = self._guard_ok("detect", lambda: self.detector.observe(seen, trajectories))
        if not ok:
            return
        if alarm is not None and self.offset:
            alarm = alarm.model_copy(update={"step": step, "evidence": [
                e.model_copy(update={"since_step": None if e.since_step is None else e.since_step + self.offset})
                for e in alarm.evidence]})
        if alarm is not None:
            self.counts["alarms"] += 1
            signals = ", ".join(f"{e.signal} {e.direction}" for e in alarm.evidence[:3])
            why = self._explained(alarm)
            if why is not None:
                self.counts["explained_alarms"] += 1
                self._record("alarm", step, {**alarm.model_dump(mode="json"), "explained_by": self.repaired_type,
                                             "explanation": why})
                self.timeline.append((step, "alarm", f"{signals}: {why} ({self.repaired_type}), not acted on"))
                alarm = None
            else:
                self.recent_evidence.append((step, frozenset((e.signal, e.direction) for e in alarm.evidence)))
                self._record("alarm", step, alarm)
                self.timeline.append((step, "alarm", f"score {alarm.score:.2f} > {alarm.threshold:.2f}: {signals}"))
        if alarm is not None:
            self.alarm_steps.append(step)
        if self.mode == "revalidating":
            self._revalidate(step, alarm)
        elif alarm is not None:
            if self._confirmed(step, alarm):
                self._on_alarm(step, alarm, escalate=False)
            else:
                self.timeline.append((step, "alarm", "waiting for confirmation before acting"))
        elif self.mode == "watching" and step % self.config.checkpoint_every == 0:
            self._guard("checkpoint", lambda: self._checkpoint(step))

    def _unexplained_and_unconfirmed(self, step: int, diagnosis: Diagnosis | None) -> bool:
        """No diagnosis, no knob drift, and the alarms are not yet persistent: do not act yet."""
        if self.remediator.generic or self.remediator.diagnosed_type(diagnosis) is not None:
            return False
        if self._drifted():
            return False
        recent = [s for s in self.alarm_steps if s > step - self.config.unknown_confirm_window]
        return len(recent) < self.config.unknown_confirm_alarms

    def _track_knobs(self, step: int) -> None:
        """Note every knob change the loop did not make (a configuration push mid-run), with the value before it."""
        if self.handle is None:
            return
        current = self.handle.knobs()
        for name, value in current.items():
            before = self.seen_knobs.get(name, value)
            if value != before and self.loop_knobs.get(name, before) != value:
                earlier = self.knob_changes.get(name)
                if earlier is None or earlier[0] <= step - self.config.drift_window:
                    self.knob_changes[name] = (step, before)
                    # the last checkpoint before the push is the one a rollback will want: keep it
                    info, _ = self.checkpointer.latest_valid(before_step=step - 1)
                    self.checkpointer.pin(info.step if info is not None else None)
        self.seen_knobs = current

    def _refresh_seen_knobs(self) -> None:
        """After the loop itself turned knobs: their new values are not somebody else's change."""
        if self.handle is not None:
            self.seen_knobs = self._guard("knobs", self.handle.knobs) or self.seen_knobs

    def _drifted(self) -> bool:
        """A knob differs from the rollback checkpoint's (not counting the loop's own changes)."""
        current = self.handle.knobs() if self.handle is not None else {}
        return any(k in current and current[k] != v for k, v in self._healthy_knobs().items())

    def _explained(self, alarm: Alarm) -> str | None:
        """Why an alarm after a repair is not a new symptom (``None``: it is one).

        * upstream: its strong evidence lies only in the repaired type's upstream signals (a signal
          listed beside them with |z| < ``explain_min_z`` is noise, not a new symptom);
        * lag: a knob pushed mid-run was undone, so the trainer runs on its healthy configuration
          again, and the evidence only repeats the incident's own deviations (same signal, same
          direction) while eval accuracy has not fallen since: the run is still catching up.
        """
        if not alarm.evidence:
            return None
        strong = [e for e in alarm.evidence if e.z is None or abs(e.z) >= self.config.explain_min_z] or alarm.evidence
        upstream = UPSTREAM_SIGNALS.get(self.repaired_type or "")
        if upstream and all(e.signal in upstream for e in strong):
            return "the known upstream cause"
        if self.lag_signature and all((e.signal, e.direction) in self.lag_signature for e in strong):
            now = self._recent_accuracy()
            if now is not None and (self.lag_accuracy is None or now >= self.lag_accuracy - self.config.regression_margin):
                return "the lag of an undone knob change"
        return None

    def _recent_accuracy(self) -> float | None:
        """Mean eval accuracy of the last two steps (``None`` when neither has a finite one)."""
        recent = [self.accuracy_at.get(s) for s in (self.last_step - 1, self.last_step)]
        recent = [a for a in recent if a is not None and math.isfinite(a)]
        return sum(recent) / len(recent) if recent else None

    def _confirmed(self, step: int, alarm: Alarm) -> bool:
        """A single weak alarm is only reported; acting needs repeated or strong evidence."""
        if self.mode == "alert_only":
            return True  # nothing will be done anyway: diagnose and record at once
        recent = [s for s in self.alarm_steps if s > step - self.config.confirm_window]
        strong = alarm.threshold > 0 and alarm.score >= self.config.strong_alarm * alarm.threshold
        return strong or len(recent) >= self.config.confirm_alarms or self._recent_push(step)

    def _recent_push(self, step: int) -> bool:
        """A knob the loop did not turn changed within ``drift_window`` steps and still has the pushed
        value: a suspect for any alarm, so one alarm is enough to act on (healthy runs get no pushes)."""
        return any(at > step - self.config.drift_window and self.seen_knobs.get(name, before) != before
                   for name, (at, before) in self.knob_changes.items())

    def _diagnose(self, step: int) -> Diagnosis | None:
        if self.diagnoser is None:
            return None
        history = pl.DataFrame(self.history, schema={"run_id": pl.Utf8, "step": pl.Int64, **{f: pl.Float64 for f in FEATURES}})
        effective = step - self.offset
        ok, diagnosis = self._guard_ok("diagnose", lambda: self.diagnoser.diagnose(
            history, self.run_id, effective, task_group=self.task_group, model_size=self.model_size))
        if ok and diagnosis is not None:
            self.counts["diagnoses"] += 1
            self._record("diagnosis", step, diagnosis)
            top = diagnosis.top
            self.timeline.append((step, "diagnosis", diagnosis.summary or (
                f"{top.fault_type} (p={top.probability:.2f})" if top else "unknown")))
        return diagnosis if ok else None

    def _on_alarm(self, step: int, alarm: Alarm, escalate: bool) -> None:
        diagnosis = self._diagnose(step)
        if self.mode == "alert_only" or self.handle is None:
            return
        if self.incident is None or not escalate:
            window = [s for s in self.alarm_steps if s > step - self.config.confirm_window] or [step]
            since = [e.since_step for e in alarm.evidence if e.since_step is not None]
            # the first deviating step: the evidence's onset, but never further back than
            # max_lookback steps before the first alarm (slow drifts would roll back everything)
            first = min(since) if since else min(window) - self.config.default_lookback
            first = max(first, min(window) - self.config.max_lookback, 1)
            first = min(first, step)
            before = first - 1 - self.config.rollout_lag
            # a knob somebody changed shortly before is the prime suspect: roll back to before the change
            pushed = [at for at, _ in self.knob_changes.values() if at > step - self.config.drift_window]
            before = min([before, *(at - 1 for at in pushed)])
            self.incident = Incident(start_step=step, first_deviation=first, rollback_before=max(before, 0))
        if not escalate and self._unexplained_and_unconfirmed(step, diagnosis):
            self.timeline.append((step, "plan", "unexplained alarm, no knob changed: alert only until it persists"))
            self.incident = None
            return
        if not escalate and self.remediator.blind_budget_used(diagnosis) and not self._drifted():
            self._record("outcome", step, Outcome(action=Action(kind="none", reason="unexplained alarm; the run's one blind intervention is spent"),
                                                   result="failed", detail="reported, not acted on"))
            self.timeline.append((step, "plan", "unexplained alarm again: reported, not acted on (one blind intervention per run)"))
            self.incident = None
            return
        if not escalate and self.max_steps is not None and self.max_steps - step < self.config.revalidate_steps:
            self._record("outcome", step, Outcome(action=Action(kind="none", reason="too close to the end of training to act and revalidate"),
                                                   result="failed", detail="reported, not acted on"))
            self.timeline.append((step, "plan", f"{self.max_steps - step} step(s) left: too late to act and revalidate; reported"))
            self.incident = None
            return
        ok, plan = self._guard_ok("remediate", lambda: self.remediator.plan(
            diagnosis, self.handle.capabilities(), self.handle.knobs(), self._healthy_knobs(), escalate=escalate,
            ceilings=self.ceilings, pushed_from={name: before for name, (_, before) in self.knob_changes.items()}))
        if not ok:
            return
        if plan is None:
            self._record("outcome", step, Outcome(action=Action(kind="none", reason="no rung left or intervention budget used up"),
                                                   result="failed", detail="alert-only from here"))
            self.timeline.append((step, "outcome", "no further action available: alert-only"))
            self.mode = "alert_only"
            return
        held = self._accuracy_holds(self.incident) if plan.rung.halt and escalate and self.config.halt_needs_regression else None
        if held is not None and (plan.fault_type is None or not ends_in_halt_only(plan.fault_type)):
            # the knob rungs are used up, but the run is not getting worse: stopping it would only lose
            # the steps still to come (a code fault's ladder, which has no knob rung, still halts)
            self.remediator.interventions -= 1  # planned, not taken
            self._record("outcome", step, Outcome(action=Action(kind="none", reason=f"{plan.fault_type or 'unexplained'}: "
                                                                "knob rungs used up; no halt while eval accuracy holds"),
                                                   result="failed", detail=f"alert-only from here (eval accuracy {held:.3f})"))
            self.timeline.append((step, "outcome", f"rungs used up, eval accuracy holds ({held:.3f}): not halted, alert-only"))
            self.mode, self.incident = "alert_only", None
            return
        self._apply(step, plan)

    def _apply(self, step: int, plan: Plan) -> None:
        assert self.incident is not None and self.handle is not None
        self.counts["interventions"] += 1
        incident = self.incident
        incident.plan, incident.applied_at, incident.window, incident.changed = plan, step, [], []
        label = plan.fault_type or "unexplained"
        text = f"{label}, rung {plan.rung_index + 1}: {plan.rung.reason}" if plan.rung_index >= 0 else plan.rung.reason
        self.timeline.append((step, "plan", text))
        for action in plan.actions:
            self.counts["actions"] += 1
            try:
                detail = self._do(action, incident)
            except Exception as exc:
                self._error("apply", step, exc, action=action.model_dump(mode="json"))
                self._revert(step, incident, f"{action.kind} failed: {exc}")
                return
            self._record("action", step, {**action.model_dump(mode="json"), "detail": detail, "rung": plan.rung_index,
                                          "fault_type": plan.fault_type})
            self.timeline.append((step, "action", " ".join(p for p in (action.kind, action.knob, detail) if p)))
        self._refresh_seen_knobs()
        if plan.diagnosed_type is not None and any(a.kind == "set_knob" for a in plan.actions):
            self.repaired_type = plan.diagnosed_type
        if plan.rung.restore_drifted and any(a.kind == "set_knob" and a.knob in self.knob_changes for a in plan.actions):
            window = [ev for s, ev in self.recent_evidence if s > incident.start_step - self.config.confirm_window]
            self.lag_signature = frozenset().union(*window)
            self.lag_accuracy = incident.reference_accuracy if incident.reference_accuracy is not None else self._recent_accuracy()
        if any(a.kind == "halt" for a in plan.actions):
            self._outcome(step, plan, "halted", "training stopped on the last healthy weights")
            self.mode, self.incident = "halted", None
            return
        if self.config.reset_detector_after_action:
            self._guard("detect", lambda: self.detector.reset(self.run_id, self.task_group, self.model_size))
        self.mode = "revalidating"

    def _do(self, action: Action, incident: Incident) -> str:
        handle = self.handle
        assert handle is not None
        if action.kind == "rollback":
            kept = self._no_regression(incident)
            if kept is not None:
                incident.reference_accuracy = kept
                return f"skipped: eval accuracy {kept:.3f} has not fallen since the checkpoint (nothing to undo)"
            knobs_now = handle.knobs()
            info, skipped = self._restore(incident.rollback_before)
            for message in skipped:
                self._record("error", self.last_step, {"stage": "checkpoint", "error": message, "fallback": "previous checkpoint"})
            if "learning_rate" in knobs_now:  # the optimiser state carries an LR: keep the knob as it was
                handle.set("learning_rate", knobs_now["learning_rate"])
            incident.reference_accuracy = self.accuracy_at.get(info.step)
            self.counts["rollbacks"] += 1
            discarded = self._discarded_by(info)
            restored = self.effective_at.get(info.step, info.step)
            self.offset = self.last_step - restored
            self.history = deque((h for h in self.history if h["step"] <= restored), maxlen=self.config.max_history)
            if incident.plan is not None and incident.plan.rung.halt:
                return f"to step {info.step}"
            rewound = handle.rewind_data(discarded)  # the discarded steps' batches first, then the planned order
            replayed = self._replay(discarded)
            return (f"to step {info.step}" + (f"; {replayed} step(s) added to train again" if replayed else "")
                    + (f"; {rewound} discarded batch(es) come again" if rewound else ""))
        if action.kind == "set_knob":
            assert action.knob is not None
            handle.set(action.knob, action.value)
            incident.changed.append(action)
            self.loop_knobs[action.knob] = action.value
            return f"{_fmt(action.previous)} -> {_fmt(action.value)}"
        if action.kind == "halt":
            handle.halt()
            return "stop requested"
        if action.kind.startswith("backup_"):
            handle.switch_backup(action.kind.removeprefix("backup_"))
            return "switched"
        raise ValueError(f"unknown action kind {action.kind!r}")

    def _restore(self, before_step: int) -> tuple[CheckpointInfo, list[str]]:
        """Restore the newest valid checkpoint at or before ``before_step``; when the ones that old
        were already pruned, the oldest one kept (the closest to the healthy state there is)."""
        handle = self.handle
        assert handle is not None
        try:
            return self.checkpointer.restore(handle.model, handle.optimizer, handle.scheduler, before_step=before_step)
        except CheckpointError:
            kept = self.checkpointer.steps()
            if not kept or kept[0] <= before_step:
                raise
            info, skipped = self.checkpointer.restore(handle.model, handle.optimizer, handle.scheduler, before_step=kept[0])
            return info, [*skipped, f"no checkpoint kept at or before step {before_step}: restored the oldest, step {info.step}"]

    def _replay(self, discarded: int) -> int:
        """Extend the run by the ``discarded`` steps (within ``max_replay_fraction`` of the planned
        length), so the rolled-back run still gets its planned number of updates; returns the steps added."""
        if not self._can_replay():
            return 0
        added = self.handle.extend(min(discarded, self._replay_budget()))
        self.replayed += added
        self.max_steps += added
        return added

    def _no_regression(self, incident: Incident) -> float | None:
        """The current eval accuracy when the run has not regressed since the rollback checkpoint (a
        rollback would only discard progress), else ``None`` (roll back). Halting always rolls back,
        and so does a run whose eval accuracy sits at its ceiling when the discarded steps can all
        be replayed: there, accuracy cannot show the damage (a collapsed entropy, a policy that
        learned to avoid a failing tool) that the weights may carry; and so does a run whose eval
        accuracy fell well below its best since the checkpoint (the progress is lost already), and
        one whose rung undoes a configuration push the checkpoint predates (see :meth:`_resumes_before_push`)."""
        plan = incident.plan
        if not self.config.rollback_needs_regression or plan is None or plan.rung.halt:
            return None
        held = self._accuracy_holds(incident)
        if held is not None and held >= self.config.saturated_accuracy and self._replayable(incident):
            return None
        if held is None:
            return None
        info, _ = self.checkpointer.latest_valid(before_step=incident.rollback_before)
        if info is not None and (self._fell_from_peak(info, held) or (self._replayable(incident) and self._resumes_before_push(plan, info))):
            return None
        return held

    def _resumes_before_push(self, plan: Plan, info: CheckpointInfo) -> bool:
        """The rung sets back a knob that somebody else changed, and the rollback checkpoint ``info``
        predates the change: replayed on their own batches, the discarded steps then train as if the push
        never happened (a rollback costs compute only; there is no progress for an accuracy test to protect)."""
        for action in plan.actions:
            pushed = self.knob_changes.get(action.knob or "") if action.kind == "set_knob" else None
            if pushed is not None and action.value == pushed[1] and info.step < pushed[0]:
                return True
        return False

    def _fell_from_peak(self, info: CheckpointInfo, now: float) -> bool:
        """Eval accuracy ``now`` lies ``peak_drop`` below the best 2-step mean since the rollback
        checkpoint ``info``: the weights the run had there were better than the ones it has."""
        means = []
        for step in range(info.step + 1, self.last_step - 1):
            pair = [a for a in (self.accuracy_at.get(step - 1), self.accuracy_at.get(step)) if a is not None and math.isfinite(a)]
            if pair:
                means.append(sum(pair) / len(pair))
        return bool(means) and now < max(means) - self.config.peak_drop

    def _replayable(self, incident: Incident) -> bool:
        """Every step a rollback to the incident's checkpoint would discard fits in the replay budget
        (the rollback then costs compute only, not updates)."""
        if not self._can_replay():
            return False
        info, _ = self.checkpointer.latest_valid(before_step=incident.rollback_before)
        return info is not None and self._discarded_by(info) <= self._replay_budget()

    def _can_replay(self) -> bool:
        """Replays are on and the trainer's planned length is known and can be extended."""
        return (self.config.replay_rollbacks and self.handle is not None and self.handle.state is not None
                and self.max_steps is not None and bool(self.planned_steps))

    def _discarded_by(self, info: CheckpointInfo) -> int:
        """Effective steps a rollback to checkpoint ``info`` throws away."""
        return self.last_step - self.offset - self.effective_at.get(info.step, info.step)

    def _replay_budget(self) -> int:
        """Steps the run may still be extended by (``max_replay_fraction`` of the planned steps in all)."""
        return int(self.config.max_replay_fraction * (self.planned_steps or 0)) - self.replayed

    def _accuracy_holds(self, incident: Incident | None) -> float | None:
        """The current eval accuracy when it has not fallen (by more than ``regression_margin``) below
        that of the incident's rollback checkpoint, else ``None`` (also when either is unknown)."""
        if incident is None:
            return None
        info, _ = self.checkpointer.latest_valid(before_step=incident.rollback_before)
        then = self.accuracy_at.get(info.step) if info is not None else None
        now = self._recent_accuracy()
        if then is None or not math.isfinite(then) or now is None:
            return None
        return now if now >= then - self.config.regression_margin else None

    def _revert(self, step: int, incident: Incident, why: str) -> None:
        assert self.handle is not None
        for action in reversed(incident.changed):
            self._guard("apply", lambda a=action: self.handle.set(a.knob, a.previous))
            self.loop_knobs.pop(action.knob, None)
        self._refresh_seen_knobs()
        if incident.plan is not None:
            self._outcome(step, incident.plan, "reverted", why)
        incident.changed = []

    def _revalidate(self, step: int, alarm: Alarm | None) -> None:
        incident = self.incident
        assert incident is not None and incident.plan is not None
        incident.window.append((step, self.accuracy_at.get(step)))
        if alarm is not None:
            self._outcome(step, incident.plan, "escalated", f"alarm again {step - incident.applied_at} step(s) after the action")
            self.mode = "watching"
            self._on_alarm(step, alarm, escalate=True)
            return
        if len(incident.window) < self.config.revalidate_steps:
            return
        accuracies = [a for _, a in incident.window if a is not None]
        ref = incident.reference_accuracy
        if ref is not None and accuracies and sum(accuracies) / len(accuracies) < ref - self.config.revert_drop:
            # no alarm, but the run is clearly worse than at the checkpoint: the rung was not enough
            self._outcome(step, incident.plan, "escalated", f"eval accuracy {sum(accuracies) / len(accuracies):.2f} "
                          f"well below the checkpoint's {ref:.2f}")
            self.mode = "watching"
            self._on_alarm(step, Alarm(run_id=self.run_id, step=step, score=0.0, threshold=0.0), escalate=True)
            return
        self._outcome(step, incident.plan, "kept", f"no alarm for {len(incident.window)} steps")
        self.incident = None
        self.mode = "watching"
        self._guard("checkpoint", lambda: self._checkpoint(step))

    # --- helpers ------------------------------------------------------------------------------
    def _checkpoint(self, step: int) -> None:
        handle = self.handle
        if handle is None or handle.model is None:
            return
        info = self.checkpointer.save(step, handle.model, handle.optimizer, handle.scheduler, handle.knobs())
        self.checkpoints = [c for c in self.checkpoints if c.path.exists()] + [info]
        self.counts["checkpoints"] += 1

    def _healthy_knobs(self) -> dict[str, Any]:
        """Knob values of the rollback checkpoint; for a knob something else changed within
        ``drift_window`` steps of the incident, its value before that change (the checkpoint may
        postdate it); the loop's own later settings on top (a change the loop made is a repair,
        never drift to undo)."""
        assert self.incident is not None
        info, _ = self.checkpointer.latest_valid(before_step=self.incident.rollback_before)
        recent = {name: before for name, (at, before) in self.knob_changes.items()
                  if at > self.incident.start_step - self.config.drift_window}
        return {**(info.knobs if info is not None else {}), **recent, **self.loop_knobs}

    def _outcome(self, step: int, plan: Plan, result: str, detail: str) -> None:
        rung = plan.rung
        action = Action(kind="rung", reason=f"{plan.fault_type or 'unknown'} rung {plan.rung_index}: {rung.reason}")
        outcome = Outcome(action=action, result=result, detail=detail)  # type: ignore[arg-type]
        self.outcomes.append(outcome)
        self._record("outcome", step, outcome)
        self.timeline.append((step, "outcome", f"{result}: {detail}"))

    def _record(self, kind: str, step: int | None, payload: Any) -> None:
        try:
            self.store.record(kind, self.run_id, step, payload)
        except Exception:  # the store must not take the trainer down either
            self.counts["errors"] += 1

    def _error(self, stage: str, step: int, exc: BaseException, **extra: Any) -> None:
        self.counts["errors"] += 1
        if self.counts["errors"] <= MAX_ERROR_RECORDS:
            self._record("error", step, {"stage": stage, "error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc(limit=6), **extra})
        self.timeline.append((step, "error", f"{stage}: {type(exc).__name__}: {exc}"))
        if self.mode in ("watching", "revalidating"):
            self.mode = "alert_only"
            self.incident = None

    def _guard_ok(self, stage: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, fn()
        except Exception as exc:
            self._error(stage, self.last_step, exc)
            return False, None

    def _guard(self, stage: str, fn: Callable[[], Any]) -> Any:
        return self._guard_ok(stage, fn)[1]


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _caps_json(caps: Capabilities) -> dict[str, Any]:
    return {"knobs": sorted(caps.knobs), "rollback": caps.rollback, "halt": caps.halt, "backups": sorted(caps.backups)}
