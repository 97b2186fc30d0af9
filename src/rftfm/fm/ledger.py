"""What the closed loop keeps track of, apart from its state machine.

* :class:`Journal` -- the incident store, the counters, the timeline and the outcomes of one run;
* :class:`KnobLedger` -- the trainer's knob values, the changes somebody else made (configuration
  pushes) and the ones the loop made itself;
* :class:`RunLength` -- the run's planned and current length and its *effective* steps through
  rollbacks (after a rollback to effective step c the next step is c + 1 again).
"""

from __future__ import annotations

import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rftfm.fm import policy
from rftfm.fm.incidents import IncidentLog
from rftfm.fm.remediate import Plan
from rftfm.fm.types import Action, Alarm, Outcome

MAX_ERROR_RECORDS = 20  # per run; later errors are only counted


def trim_oldest(table: dict[int, Any], size: int) -> None:
    """Drop the oldest entries (dicts keep insertion order) so per-step tables stay bounded."""
    while len(table) > size:
        table.pop(next(iter(table)))


class Journal:
    """Records of one run: every event into the store (which must never take the trainer down),
    counters, and bounded in-memory copies for displays (the store keeps everything)."""

    def __init__(self, store: IncidentLog, run_id: str, max_history: int):
        self.store, self.run_id = store, run_id
        self.counts = {"alarms": 0, "explained_alarms": 0, "diagnoses": 0, "actions": 0, "interventions": 0,
                       "rollbacks": 0, "errors": 0, "checkpoints": 0}
        self.outcomes: deque[Outcome] = deque(maxlen=max_history)
        self.timeline: deque[tuple[int, str, str]] = deque(maxlen=max_history)  # (step, kind, text)

    def record(self, kind: str, step: int | None, payload: Any) -> None:
        try:
            self.store.record(kind, self.run_id, step, payload)
        except Exception:  # the store must not take the trainer down either
            self.counts["errors"] += 1

    def note(self, step: int, kind: str, text: str) -> None:
        self.timeline.append((step, kind, text))

    def alarm(self, step: int, alarm: Alarm, explanation: str | None = None, explained_by: str | None = None) -> None:
        """An alarm; with an ``explanation`` one that a repair explains (reported, not acted on)."""
        self.counts["alarms"] += 1
        signals = ", ".join(f"{e.signal} {e.direction}" for e in alarm.evidence[:3])
        if explanation is None:
            self.record("alarm", step, alarm)
            self.note(step, "alarm", f"score {alarm.score:.2f} > {alarm.threshold:.2f}: {signals}")
            return
        self.counts["explained_alarms"] += 1
        self.record("alarm", step, {**alarm.model_dump(mode="json"), "explained_by": explained_by,
                                    "explanation": explanation})
        self.note(step, "alarm", f"{signals}: {explanation} ({explained_by}), not acted on")

    def action(self, step: int, action: Action, detail: str, plan: Plan) -> None:
        self.record("action", step, {**action.model_dump(mode="json"), "detail": detail, "rung": plan.rung_index,
                                     "fault_type": plan.fault_type})
        self.note(step, "action", " ".join(p for p in (action.kind, action.knob, detail) if p))

    def held(self, step: int, hold: policy.Hold) -> None:
        """An alarm reported, not acted on."""
        if hold.reason:
            self.record("outcome", step, Outcome(action=Action(kind="none", reason=hold.reason), result="failed",
                                                 detail=hold.detail))
        self.note(step, hold.timeline_kind, hold.note)

    def outcome(self, step: int, plan: Plan, result: str, detail: str) -> None:
        reason = f"{plan.fault_type or 'unknown'} rung {plan.rung_index}: {plan.rung.reason}"
        action = Action(kind="rung", reason=reason)
        outcome = Outcome(action=action, result=result, detail=detail)  # type: ignore[arg-type]
        self.outcomes.append(outcome)
        self.record("outcome", step, outcome)
        self.note(step, "outcome", f"{result}: {detail}")

    def error(self, stage: str, step: int, exc: BaseException, **extra: Any) -> None:
        self.counts["errors"] += 1
        if self.counts["errors"] <= MAX_ERROR_RECORDS:
            self.record("error", step, {"stage": stage, "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc(limit=6), **extra})
        self.note(step, "error", f"{stage}: {type(exc).__name__}: {exc}")


@dataclass
class KnobLedger:
    """Knob values read at the last step, changes the loop did not make, and the loop's own settings."""

    seen: dict[str, Any] = field(default_factory=dict)
    pushes: dict[str, tuple[int, Any]] = field(default_factory=dict)  # knob -> (step, value before)
    by_loop: dict[str, Any] = field(default_factory=dict)

    def track(self, current: dict[str, Any], step: int, cfg: policy.ControllerConfig) -> dict[str, tuple[int, Any]]:
        """Read this step's values; returns the pushes first seen now."""
        new = policy.new_pushes(current, self.seen, self.by_loop, self.pushes, step, cfg)
        self.pushes.update(new)
        self.seen = current
        return new

    def healthy(self, checkpoint_knobs: dict[str, Any], incident_start: int,
                cfg: policy.ControllerConfig) -> dict[str, Any]:
        return policy.healthy_knobs(checkpoint_knobs, self.pushes, self.by_loop, incident_start, cfg)

    def pushed_from(self) -> dict[str, Any]:
        """Each knob's value before the last change the loop did not make."""
        return {name: before for name, (_, before) in self.pushes.items()}


@dataclass
class RunLength:
    """The run's planned and current length, the steps replayed, and real -> effective steps."""

    max_steps: int | None = None  # planned + replayed, when the trainer says it
    planned_steps: int | None = None
    replayed: int = 0  # steps added to the run to train again what rollbacks discarded
    offset: int = 0  # real step - effective step (grows with every rollback)
    effective_at: dict[int, int] = field(default_factory=lambda: {0: 0})

    def step(self, real: int, max_history: int) -> int:
        """The effective step of real step ``real`` (remembered for later rollbacks)."""
        effective = real - self.offset
        self.effective_at[real] = effective
        trim_oldest(self.effective_at, max_history)
        return effective

    def discarded_by(self, checkpoint_step: int, last_step: int) -> int:
        """Effective steps a rollback to the checkpoint of real step ``checkpoint_step`` throws away."""
        return last_step - self.offset - self.effective_at.get(checkpoint_step, checkpoint_step)

    def rolled_back(self, checkpoint_step: int, last_step: int) -> int:
        """After a rollback at ``last_step``: the effective step the run stands at again."""
        restored = self.effective_at.get(checkpoint_step, checkpoint_step)
        self.offset = last_step - restored
        return restored

    def can_extend(self, cfg: policy.ControllerConfig) -> bool:
        """Replays are on and the planned length is known."""
        return cfg.replay_rollbacks and self.max_steps is not None and bool(self.planned_steps)

    def budget(self, cfg: policy.ControllerConfig) -> int:
        return policy.replay_budget(self.planned_steps, self.replayed, cfg)

    def extended(self, added: int) -> int:
        self.replayed += added
        if self.max_steps is not None:
            self.max_steps += added
        return added
