"""The RFT-FM closed loop: observe -> detect -> diagnose -> remediate -> revalidate.

:class:`Controller` watches one run step by step. It keeps periodic checkpoints while the
run is healthy; on an alarm it asks the diagnoser, takes the remediator's rung (rollback to
the last checkpoint before the first deviating step, knob changes, halt), then revalidates
over ``revalidate_steps`` steps: no new alarm -> *kept*; alarm, or eval accuracy well below
the checkpoint's -> *escalated* to the next rung; a rung whose actions fail to apply has its
knob changes *reverted*. When to act and how far to roll back are the rules of
:mod:`rftfm.fm.policy`; this module is the state machine that follows them.

It acts on the trainer only through :class:`~rftfm.fm.handle.TrainerHandle` (the trainer knobs, the
checkpoint, the trainer's stop flag and backups the user registered). Every alarm, diagnosis, action,
outcome and internal error goes to the incident store. An exception in any stage is recorded as an
``error`` incident and never reaches the trainer; the controller then degrades to alert-only (it keeps
detecting, diagnosing and recording, but no longer acts).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from rftfm.fm import policy
from rftfm.fm.checkpoint import Checkpointer, CheckpointInfo
from rftfm.fm.handle import TrainerHandle
from rftfm.fm.incidents import IncidentLog, MemoryIncidentStore
from rftfm.fm.ledger import HeldOut, Journal, KnobLedger, RunLength
from rftfm.fm.playbook import ends_in_halt_only
from rftfm.fm.policy import ControllerConfig, Hold, Pushes
from rftfm.fm.remediate import Capabilities, Plan, Remediator
from rftfm.fm.sensing import DetectorLike, DiagnoserLike, Sensing
from rftfm.fm.types import Action, Alarm, Diagnosis
from rftfm.records import StepRecord, TrajectoryRecord

Mode = Literal["watching", "revalidating", "alert_only", "halted"]

__all__ = ["Controller", "ControllerConfig", "Incident", "MemoryIncidentStore", "TrainerHandle"]


@dataclass
class Incident:
    """One open incident: from the first alarm to kept / halted."""

    start_step: int
    rollback_before: int
    plan: Plan | None = None
    applied_at: int = 0
    window: list[tuple[int, float | None]] = field(default_factory=list)  # (step, eval accuracy)
    reference_accuracy: float | None = None
    changed: list[Action] = field(default_factory=list)

    @classmethod
    def opened(
        cls, step: int, alarm: Alarm, alarm_steps: Iterable[int], pushes: Pushes, cfg: ControllerConfig
    ) -> "Incident":
        """A new incident at ``step``, whose rollback goes to before the alarm's first deviating step."""
        since = [e.since_step for e in alarm.evidence if e.since_step is not None]
        return cls(start_step=step, rollback_before=policy.rollback_before(step, alarm_steps, since, pushes, cfg))


class Controller:
    """The closed loop for one run; feed it with :meth:`observe` once per step."""

    def __init__(self, detector: DetectorLike, diagnoser: DiagnoserLike | None, remediator: Remediator | None = None,
                 store: IncidentLog | None = None, checkpointer: Checkpointer | None = None, *, run_id: str,
                 task_group: str | None = None, model_size: str | None = None,
                 config: ControllerConfig | None = None, eval_fn: Callable[[Any], float] | None = None):
        self.remediator = remediator or Remediator()
        self.store = store if store is not None else MemoryIncidentStore()
        self.config = config or ControllerConfig()
        self.checkpointer = checkpointer or Checkpointer(keep=self.config.keep_checkpoints)
        self.run_id, self.task_group, self.model_size = run_id, task_group, model_size
        self.handle: TrainerHandle | None = None
        self.mode: Mode = "watching" if self.config.remediate else "alert_only"
        self.incident: Incident | None = None
        self.heldout = HeldOut(self.config.max_history, eval_fn, self.config.eval_every,  # eval accuracy by step
                               model=lambda: self.handle.model if self.handle is not None else None)
        self.repaired_type: str | None = None  # diagnosed type of the last applied knob rung
        self.lag = policy.Lag()  # set when a knob pushed mid-run was undone (see policy.explained)
        self.recent_evidence: deque[tuple[int, frozenset[tuple[str, str]]]] = deque(maxlen=16)
        self.journal = Journal(self.store, run_id, self.config.max_history)
        self.counts, self.timeline, self.outcomes = self.journal.counts, self.journal.timeline, self.journal.outcomes
        self.sensing = Sensing(detector, diagnoser, self.journal, self._guard_ok, task_group=task_group,
                               model_size=model_size, max_history=self.config.max_history)
        self.history = self.sensing.history  # the features the diagnoser reads (bounded)
        self.knob_log = KnobLedger()
        self.length = RunLength()
        self.monitor_seconds = 0.0
        self.last_step = 0
        self.alarm_steps: deque[int] = deque(maxlen=64)  # the confirmation rules look a few steps back only
        self._point: tuple[tuple[int, int, int], CheckpointInfo | None] | None = None  # see _rollback_point

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self, handle: TrainerHandle, step: int = 0, checkpoint: bool = True,
              max_steps: int | None = None) -> None:
        """Bind the trainer and take the initial checkpoint (never raises). ``max_steps``: the run's planned
        length, when the trainer says it (rollbacks extend it). ``checkpoint=False`` leaves the checkpoint to
        :meth:`initial_checkpoint`, for a caller that can take it right before the first step (where every
        later checkpoint's RNG state also stands: before a step's rollouts)."""
        t0 = time.perf_counter()
        self.handle, self.last_step = handle, step
        self.length.max_steps = self.length.planned_steps = max_steps
        self.sensing.reset_detector()
        self.remediator.reset()
        self.knob_log.start(self._guard("knobs", handle.knobs) or {})
        every = self.config.eval_every if self.heldout.eval_fn else None
        self.journal.record("run", step, {"event": "start", "mode": self.mode, "eval_every": every,
                                          "capabilities": _caps_json(handle.capabilities())})
        self.monitor_seconds += time.perf_counter() - t0
        if checkpoint:
            self.initial_checkpoint(step)

    def initial_checkpoint(self, step: int) -> None:
        """The checkpoint a rollback to the start of the run restores, and the eval accuracy it starts from
        when there is an eval callable (never raises)."""
        t0 = time.perf_counter()
        self._guard("eval", lambda: self.heldout.measure(step))
        if self.config.remediate:
            self._guard("checkpoint", lambda: self._checkpoint(step))
        self.monitor_seconds += time.perf_counter() - t0

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Record the run's end (with ``extra`` facts, e.g. its wall time) and return the summary."""
        summary = {**self.summary(), **extra}
        self.journal.record("run", self.last_step, {"event": "end", **summary})
        return summary

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.counts, "monitor_seconds": round(self.monitor_seconds, 4),
                "checkpoint_seconds": round(self.checkpointer.save_seconds, 4),
                "checkpoint_every": self.config.checkpoint_every,
                "outcomes": [o.result for o in self.outcomes], "replayed": self.length.replayed,
                "accuracy_steps": self.heldout.seen, "evaluations": self.heldout.evaluations,
                "eval_seconds": round(self.heldout.seconds, 4)}

    # --- one step ------------------------------------------------------------------------------
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
        previous, step, self.last_step = self.last_step, record.step, record.step
        if self.mode == "halted":
            return
        record = self._guard("eval", lambda: self.heldout.take(record, previous)) or record
        self._guard("knobs", lambda: self.sensing.follow_kl_coefficient(  # (the KL coefficient the knobs say now)
            self.knob_log.track_and_pin(self.handle, self.checkpointer, step, self.config)))
        after_push = policy.pushed_recently(self.knob_log.pushes, self.knob_log.seen, step, self.config)
        ok, alarm = self.sensing.detect(record, trajectories, step - self.length.step(step, self.config.max_history),
                                        policy.alarm_threshold(after_push, self.config))
        self.config = policy.per_record(self.config, self.length.record_steps or 1)  # windows count records
        if not ok:
            return
        alarm = self._triage(step, alarm)
        if self.mode == "revalidating":
            verdict = self._revalidate(step, alarm)
            if verdict is not None and verdict.result == "escalated":
                alarm = alarm or Alarm(run_id=self.run_id, step=step, score=0.0, threshold=0.0)
                self._on_alarm(step, alarm, escalate=True)
        elif alarm is not None and self._confirmed(step, alarm):
            self._on_alarm(step, alarm, escalate=False)
        elif alarm is not None:  # not acted on; recorded with the diagnoser's reading, as the alert-only monitor's are
            self.sensing.diagnose(step, self.length.offset, self.knob_log.recent(step, self.config))
            self.journal.note(step, "alarm", "waiting for confirmation before acting")
        elif self.mode == "watching" and policy.due(previous, step, self.config.checkpoint_every):
            self._guard("checkpoint", lambda: self._checkpoint(step))

    def _triage(self, step: int, alarm: Alarm | None) -> Alarm | None:
        """Record the alarm; one that a repair explains is reported and dropped (not acted on)."""
        if alarm is None:
            return None
        why = policy.explained(alarm.evidence, self.repaired_type, self.lag, self.heldout.recent(step), self.config)
        self.journal.alarm(step, alarm, why, self.repaired_type)
        if why is not None:
            return None
        self.recent_evidence.append((step, frozenset((e.signal, e.direction) for e in alarm.evidence)))
        self.alarm_steps.append(step)
        return alarm

    def _confirmed(self, step: int, alarm: Alarm) -> bool:
        if self.mode == "alert_only":
            return True  # nothing will be done anyway: diagnose and record at once
        after_push = policy.pushed_recently(self.knob_log.pushes, self.knob_log.seen, step, self.config)
        return policy.confirmed(policy.AlarmFacts(step, alarm.score, alarm.threshold), self.alarm_steps, self.config,
                                after_push)

    # --- acting --------------------------------------------------------------------------------
    def _on_alarm(self, step: int, alarm: Alarm, escalate: bool) -> None:
        diagnosis = self.sensing.diagnose(step, self.length.offset, self.knob_log.recent(step, self.config))
        if self.mode == "alert_only" and self.config.remediate and not self.counts["errors"] and self.handle:
            self._halt_if_settled(step, alarm, diagnosis)  # stood down (no error): only a settled code fault acts
        if self.mode in ("alert_only", "halted") or self.handle is None:
            return
        if self.incident is None or not escalate:
            self.incident = Incident.opened(step, alarm, self.alarm_steps, self.knob_log.pushes, self.config)
        hold = policy.hold_back(self._new_incident(step, diagnosis, escalate), self.config)
        plan = None
        if hold is None:
            ok, plan = self._guard_ok("remediate", lambda: self.remediator.plan(
                diagnosis, self.handle.capabilities(), self.handle.knobs(), self._healthy_knobs(), escalate=escalate,
                ceilings=self.knob_log.ceilings, pushed_from=self.knob_log.pushed_from()))
            if not ok:
                return
            hold = policy.NO_RUNG_LEFT if plan is None else self._refused(plan, diagnosis)
        if hold is not None:
            self._stand_down(step, hold)
        elif plan is not None:
            self._apply(step, plan)

    def _halt_if_settled(self, step: int, alarm: Alarm, diagnosis: Diagnosis | None) -> None:
        facts = policy.AlarmFacts(step, alarm.score, alarm.threshold)
        if (settled := policy.settled_code_fault(diagnosis, facts, self.alarm_steps, self.config)) is not None:
            caps = self.handle.capabilities  # (called inside the guard)
            plan = self._guard("remediate", lambda: self.remediator.halt_plan(settled, diagnosis, caps()))
            if plan is not None:
                self.incident = Incident.opened(step, alarm, self.alarm_steps, self.knob_log.pushes, self.config)
                self._apply(step, plan)

    def _new_incident(self, step: int, diagnosis: Diagnosis | None, escalate: bool) -> policy.NewIncident:
        rem, top = self.remediator, diagnosis.top if diagnosis is not None else None
        recent = sum(s > step - self.config.unknown_confirm_steps for s in self.alarm_steps)
        return policy.NewIncident(
            step, rem.generic or rem.diagnosed_type(diagnosis) is not None, policy.drifted(self.handle.knobs(),
            self._healthy_knobs()), recent, rem.blind_budget_used(diagnosis), self.length.max_steps,
            top.probability if top else None, self.heldout.seen > 0, rem.generic, escalate)

    def _refused(self, plan: Plan, diagnosis: Diagnosis | None) -> Hold | None:
        """A plan the policy turns down: a knob rung that would change nothing, or a halt without the evidence."""
        knob_actions = sum(a.kind == "set_knob" for a in plan.actions)
        hold = policy.changes_nothing(bool(plan.rung.knobs) and not plan.rung.halt, knob_actions, plan.unchanged)
        if hold is None and plan.rung.halt:
            info, now, rem = self._rollback_point(), self._accuracy_now(), self.remediator
            then = self.heldout.at_or_before(info.step) if info is not None else None
            code_fault = plan.fault_type is not None and ends_in_halt_only(plan.fault_type)
            p = policy.strongest_halt_probability(plan.fault_type, diagnosis, rem.diagnosis_behind(plan.fault_type))
            case = policy.HaltCase(plan.fault_type, code_fault, p, then, now, policy.one_record_missing(diagnosis))
            hold = policy.halt_refused(case, self.config)
        if hold is not None:
            self.remediator.withdraw()  # planned, not taken
        return hold

    def _stand_down(self, step: int, hold: Hold) -> None:
        """The one exit for an alarm the loop reports but does not act on."""
        self.journal.held(step, hold)
        self.incident = None
        if hold.alert_only:
            self._set_mode("alert_only")

    def _apply(self, step: int, plan: Plan) -> None:
        assert self.incident is not None and self.handle is not None
        self.counts["interventions"] += 1
        incident = self.incident
        incident.plan, incident.applied_at, incident.window, incident.changed = plan, step, [], []
        label = plan.fault_type or "unexplained"
        text = f"{label}, rung {plan.rung_index + 1}: {plan.rung.reason}" if plan.rung_index >= 0 else plan.rung.reason
        self.journal.note(step, "plan", text)
        for action in plan.actions:
            self.counts["actions"] += 1
            try:
                detail = self._do(action, incident)
            except Exception as exc:
                self._error("apply", step, exc, action=action.model_dump(mode="json"))
                self._revert(step, incident, f"{action.kind} failed: {exc}")
                return
            self.journal.action(step, action, detail, plan)
        self.knob_log.seen = self._guard("knobs", self.handle.knobs) or self.knob_log.seen  # ours: no push
        self._note_repair(plan, incident)
        if any(a.kind == "halt" for a in plan.actions):
            self.journal.outcome(step, plan, "halted", "training stopped on the last healthy weights")
            self._set_mode("halted")
            return
        if self.config.reset_detector_after_action:
            self.sensing.reset_detector()
        self._set_mode("revalidating")

    def _note_repair(self, plan: Plan, incident: Incident) -> None:
        """What later alarms are judged against: the type a knob rung repaired, and after an undone push its lag."""
        if plan.diagnosed_type is not None and any(a.kind == "set_knob" for a in plan.actions):
            self.repaired_type = plan.diagnosed_type
        accuracy = incident.reference_accuracy if incident.reference_accuracy is not None else self._accuracy_now()
        self.lag = policy.lag_after(plan.actions, plan.rung.restore_drifted, self.knob_log.pushes, self.recent_evidence,
                                    incident.start_step, accuracy, self.config) or self.lag

    def _do(self, action: Action, incident: Incident) -> str:
        assert self.handle is not None
        if action.kind == "rollback":
            return self._roll_back(incident)
        detail = self.handle.apply(action)
        if action.kind == "set_knob":
            incident.changed.append(action)
            self.knob_log.by_loop[action.knob] = action.value
            self.sensing.knob_set(action.knob, action.previous, action.value)
        return detail

    def _roll_back(self, incident: Incident) -> str:
        """Restore the incident's checkpoint as a resume does (its batches come again); keep weights not regressed."""
        handle = self.handle
        assert handle is not None and incident.plan is not None
        kept = policy.skip_rollback(self._rollback_case(incident.plan), self.config)
        if kept is not None:
            incident.reference_accuracy = kept
            return f"skipped: eval accuracy {kept:.3f} has not fallen since the checkpoint (nothing to undo)"
        info, skipped = handle.restore(self.checkpointer, incident.rollback_before)
        for message in skipped:
            self.journal.record("error", self.last_step, {"stage": "checkpoint", "error": message,
                                                          "fallback": "previous checkpoint"})
        incident.reference_accuracy = self.heldout.at_or_before(info.step)
        self.counts["rollbacks"] += 1
        discarded = self.length.discarded_by(info.step, self.last_step)
        restored = self.length.rolled_back(info.step, self.last_step)
        self.sensing.rewind(restored, info.knobs.get("learning_rate"))
        if incident.plan.rung.halt:
            return f"to step {info.step}"
        rewound = handle.rewind_data(discarded)  # the discarded steps' batches first, then the planned order
        # extended by the steps it discarded (within the replay budget): it still gets its planned updates
        budget = self.length.budget(self.config)
        can = self.length.can_extend(self.config, handle.state)
        replayed = self.length.extended(handle.extend(min(discarded, budget))) if can else 0
        return (f"to step {info.step}" + (f"; {replayed} step(s) added to train again" if replayed else "")
                + (f"; {rewound} discarded batch(es) come again" if rewound else ""))

    def _rollback_case(self, plan: Plan) -> policy.RollbackCase:
        at = info.step if (info := self._rollback_point()) is not None else None
        self._accuracy_now()  # measured now if nothing recent is known and an eval callable can
        replayable = (at is not None and self.length.can_extend(self.config, self.handle and self.handle.state)
                      and self.length.discarded_by(at, self.last_step) <= self.length.budget(self.config))
        return policy.rollback_case(plan.actions, plan.rung.halt, at, self.heldout.at, self.last_step,
                                    self.knob_log.pushes, replayable)

    def _revert(self, step: int, incident: Incident, why: str) -> None:
        assert self.handle is not None
        for action in reversed(incident.changed):
            self._guard("apply", lambda a=action: self.handle.set(a.knob, a.previous))
            self.knob_log.by_loop.pop(action.knob, None)
            self.sensing.knob_set(action.knob, action.value, action.previous)
        self.knob_log.seen = self._guard("knobs", self.handle.knobs) or self.knob_log.seen  # ours: no push
        if incident.plan is not None:
            self.journal.outcome(step, incident.plan, "reverted", why)
        incident.changed = []

    def _revalidate(self, step: int, alarm: Alarm | None) -> policy.Verdict | None:
        """One step of an incident's revalidation window; records the verdict once there is one."""
        incident = self.incident
        assert incident is not None and incident.plan is not None
        incident.window.append((step, self.heldout.at.get(step)))
        closing = alarm is None and len(incident.window) >= self.config.revalidate_steps
        if closing and all(a is None for _, a in incident.window):  # the window ends: its accuracy, if one can be had
            incident.window[-1] = (step, self._accuracy_now())
        verdict = policy.revalidation_verdict(alarm is not None, step - incident.applied_at,
                                              [a for _, a in incident.window], incident.reference_accuracy, self.config)
        if verdict is None:
            return None
        self.journal.outcome(step, incident.plan, verdict.result, verdict.detail)
        self._set_mode("watching")
        if verdict.result == "kept":
            self.incident = None
            self._guard("checkpoint", lambda: self._checkpoint(step))
        return verdict

    # --- state helpers -------------------------------------------------------------------------
    def _set_mode(self, mode: Mode) -> None:
        """Every mode change goes through here; leaving the repair states closes the open incident."""
        self.mode, self.incident = mode, None if mode in ("alert_only", "halted") else self.incident

    def _rollback_point(self) -> CheckpointInfo | None:
        """The open incident's rollback checkpoint: looked up (and verified) once per step."""
        assert self.incident is not None
        key = (self.last_step, self.incident.rollback_before, self.counts["checkpoints"])
        if self._point is None or self._point[0] != key:
            self._point = (key, self.checkpointer.latest_valid(before_step=self.incident.rollback_before)[0])
        return self._point[1]

    def _checkpoint(self, step: int) -> None:
        if self.handle is not None and self.handle.model is not None:
            self.handle.save(self.checkpointer, step)
            self.counts["checkpoints"] += 1

    def _healthy_knobs(self) -> dict[str, Any]:
        assert self.incident is not None
        info = self._rollback_point()
        return self.knob_log.healthy(info.knobs if info is not None else {}, self.incident.start_step, self.config)

    def _accuracy_now(self) -> float | None:
        """Eval accuracy of the last two steps; measured now when neither has one and an eval callable can."""
        if self.heldout.recent(self.last_step) is None and self.heldout.eval_fn is not None:
            self._guard("eval", lambda: self.heldout.measure(self.last_step))
        return self.heldout.recent(self.last_step)

    def _error(self, stage: str, step: int, exc: BaseException, **extra: Any) -> None:
        """An exception in any stage: recorded, never raised; the loop stops acting."""
        self.journal.error(stage, step, exc, **extra)
        if self.mode in ("watching", "revalidating"):
            self._set_mode("alert_only")

    def _guard_ok(self, stage: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, fn()
        except Exception as exc:
            self._error(stage, self.last_step, exc)
            return False, None

    def _guard(self, stage: str, fn: Callable[[], Any]) -> Any:
        return self._guard_ok(stage, fn)[1]


def _caps_json(caps: Capabilities) -> dict[str, Any]:
    return {"knobs": sorted(caps.knobs), "rollback": caps.rollback, "halt": caps.halt, "backups": sorted(caps.backups)}
