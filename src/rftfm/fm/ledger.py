"""What the closed loop keeps track of, apart from its state machine.

* :class:`Journal` -- the incident store, the counters, the timeline and the outcomes of one run;
* :class:`KnobLedger` -- the trainer's knob values, the changes somebody else made (configuration
  pushes) and the ones the loop made itself;
* :class:`RunLength` -- the run's planned and current length and its *effective* steps through
  rollbacks (after a rollback to effective step c the next step is c + 1 again);
* :class:`HeldOut` -- eval accuracy by step, from the step records or from the user's eval callable.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rftfm.fm import policy
from rftfm.fm.incidents import IncidentLog
from rftfm.fm.remediate import Plan
from rftfm.fm.types import Action, Alarm, Outcome
from rftfm.records import StepRecord

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
        self.counts = {
            "alarms": 0,
            "explained_alarms": 0,
            "diagnoses": 0,
            "actions": 0,
            "interventions": 0,
            "rollbacks": 0,
            "errors": 0,
            "checkpoints": 0,
        }
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
        signals = ", ".join(e.short() for e in alarm.evidence[:3])
        if explanation is None:
            self.record("alarm", step, alarm)
            self.note(step, "alarm", f"score {alarm.score:.2f} > {alarm.threshold:.2f}: {signals}")
            return
        self.counts["explained_alarms"] += 1
        self.record(
            "alarm", step, {**alarm.model_dump(mode="json"), "explained_by": explained_by, "explanation": explanation}
        )
        self.note(step, "alarm", f"{signals}: {explanation} ({explained_by}), not acted on")

    def action(self, step: int, action: Action, detail: str, plan: Plan) -> None:
        self.record(
            "action",
            step,
            {
                **action.model_dump(mode="json"),
                "detail": detail,
                "rung": plan.rung_index,
                "fault_type": plan.fault_type,
            },
        )
        self.note(step, "action", " ".join(p for p in (action.kind, action.knob, detail) if p))

    def held(self, step: int, hold: policy.Hold) -> None:
        """An alarm reported, not acted on."""
        if hold.reason:
            self.record(
                "outcome",
                step,
                Outcome(action=Action(kind="none", reason=hold.reason), result="failed", detail=hold.detail),
            )
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
            self.record(
                "error",
                step,
                {
                    "stage": stage,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=6),
                    **extra,
                },
            )
        self.note(step, "error", f"{stage}: {type(exc).__name__}: {exc}")


@dataclass
class KnobLedger:
    """Knob values read at the last step, changes the loop did not make, and the loop's own settings."""

    seen: dict[str, Any] = field(default_factory=dict)
    pushes: dict[str, tuple[int, Any]] = field(default_factory=dict)  # knob -> (step, value before)
    by_loop: dict[str, Any] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)  # never raised past: the LR the user configured

    def start(self, configured: dict[str, Any]) -> None:
        """The knob values the run started with."""
        self.seen = dict(configured)
        self.ceilings = {k: configured[k] for k in ("learning_rate",) if isinstance(configured.get(k), (int, float))}

    def track(self, current: dict[str, Any], step: int, cfg: policy.ControllerConfig) -> dict[str, tuple[int, Any]]:
        """Read this step's values; returns the pushes first seen now."""
        new = policy.new_pushes(current, self.seen, self.by_loop, self.pushes, step, cfg)
        self.pushes.update(new)
        self.seen = current
        return new

    def track_and_pin(
        self, handle: Any, checkpointer: Any, step: int, cfg: policy.ControllerConfig
    ) -> dict[str, Any] | None:
        """Note every knob change the loop did not make (a configuration push mid-run), with the value before it, and
        pin the last checkpoint before it: the one a rollback will want. Called in alert-only mode too: a push lowers
        the alarm threshold. Returns the knobs read (``None``: no trainer bound)."""
        if handle is None:
            return None
        for _ in self.track(handle.knobs(), step, cfg):
            info, _ = checkpointer.latest_valid(before_step=step - 1)
            handle.pin(checkpointer, info.step if info is not None else None)
        return self.seen

    def healthy(
        self, checkpoint_knobs: dict[str, Any], incident_start: int, cfg: policy.ControllerConfig
    ) -> dict[str, Any]:
        return policy.healthy_knobs(checkpoint_knobs, self.pushes, self.by_loop, incident_start, cfg)

    def recent(self, step: int, cfg: policy.ControllerConfig) -> list[str]:
        """The knobs pushed lately and still at the pushed value (:func:`rftfm.fm.policy.recent_pushes`)."""
        return policy.recent_pushes(self.pushes, self.seen, step, cfg)

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
    last_real: int = 0  # the last record's real step
    record_steps: int | None = None  # the fewest steps seen between two records (a trainer's logging_steps)

    def step(self, real: int, max_history: int) -> int:
        """The effective step of real step ``real`` (remembered for later rollbacks); notes the steps since the last
        record."""
        if real > self.last_real > 0:
            gap = real - self.last_real
            self.record_steps = gap if self.record_steps is None else min(self.record_steps, gap)
        self.last_real = max(self.last_real, real)
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

    def can_extend(self, cfg: policy.ControllerConfig, trainer_state: Any) -> bool:
        """Replays are on, the planned length is known and the trainer's state (which holds it) is in reach."""
        return (
            cfg.replay_rollbacks
            and trainer_state is not None
            and self.max_steps is not None
            and bool(self.planned_steps)
        )

    def budget(self, cfg: policy.ControllerConfig) -> int:
        return policy.replay_budget(self.planned_steps, self.replayed, cfg)

    def extended(self, added: int) -> int:
        self.replayed += added
        if self.max_steps is not None:
            self.max_steps += added
        return added


class HeldOut:
    """Eval accuracy by (real) step: what the step records carry, or the user's ``eval_fn(model)`` run at
    the start, every ``every`` steps and whenever a decision needs the current accuracy (timed).
    ``model()`` gives the model to evaluate (the trainer's, once the loop is bound to one)."""

    def __init__(
        self,
        max_history: int,
        eval_fn: Callable[[Any], float] | None = None,
        every: int = 10,
        model: Callable[[], Any] = lambda: None,
    ):
        self.at: dict[int, float | None] = {}
        self.max_history, self.eval_fn, self.every, self.model = max_history, eval_fn, max(1, every), model
        self.evaluations, self.seconds, self.seen = 0, 0.0, 0  # eval_fn calls, their time, steps with an accuracy

    def note(self, step: int, value: float | None) -> None:
        self.at[step] = value
        self.seen += value is not None and math.isfinite(value)
        trim_oldest(self.at, self.max_history)

    def take(self, record: StepRecord, previous_step: int) -> StepRecord:
        """Note ``record``'s eval accuracy; when it has none and the eval callable is due, measure it
        and return the record with it (the detector then sees it too)."""
        self.note(record.step, record.eval_accuracy)
        if record.eval_accuracy is not None or not self.due(previous_step, record.step):
            return record
        value = self.measure(record.step)
        return record if value is None else record.model_copy(update={"eval_accuracy": value})

    def due(self, previous_step: int, step: int) -> bool:
        """The eval callable's turn: a multiple of ``every`` lies in (previous_step, step]."""
        return self.eval_fn is not None and policy.due(previous_step, step, self.every)

    def measure(self, step: int) -> float | None:
        """Run the eval callable on the model now, as step ``step``'s accuracy (``None`` without one)."""
        model = self.model()
        if self.eval_fn is None or model is None:
            return None
        t0 = time.perf_counter()
        value = float(self.eval_fn(model))
        self.seconds += time.perf_counter() - t0
        self.evaluations += 1
        self.note(step, value)
        return value

    def recent(self, step: int) -> float | None:
        return policy.recent_accuracy(self.at, step)

    def at_or_before(self, step: int) -> float | None:
        return policy.accuracy_at_or_before(self.at, step)
