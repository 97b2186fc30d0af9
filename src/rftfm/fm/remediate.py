"""The remediator: turns a diagnosis into concrete actions from the playbook.

It climbs the diagnosed type's ladder one rung per failed revalidation, keeps only the
actions the trainer declares it supports (:class:`Capabilities`), resolves relative knob
changes into values, and bounds the number of interventions per run. It never acts on
anything but the trainer's knobs, checkpoint rollback, halting and registered backups.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rftfm.fm.playbook import DRIFT_RUNG, GENERIC_LADDER, PLAYBOOK, UNKNOWN_LADDER, KnobChange, Rung
from rftfm.fm.types import Action, Diagnosis


@dataclass(frozen=True)
class Capabilities:
    """What the watched trainer can do."""

    knobs: frozenset[str] = frozenset()
    rollback: bool = False
    halt: bool = True
    backups: frozenset[str] = frozenset()  # "verifier", "tool": registered by the user


@dataclass
class Plan:
    fault_type: str | None
    rung_index: int
    rung: Rung
    actions: list[Action] = field(default_factory=list)
    diagnosed_type: str | None = None  # the diagnosis' top type (for the drift rung, fault_type is "knob_drift")
    unchanged: list[str] = field(default_factory=list)  # knobs the rung would set to the value they already have

    def __post_init__(self) -> None:
        """A knob change to the value the knob already has is no action: set aside in ``unchanged``."""
        noop = [a for a in self.actions if a.kind == "set_knob" and a.value == a.previous]
        self.unchanged += [a.knob for a in noop if a.knob is not None]
        self.actions = [a for a in self.actions if a not in noop]


def _undoes(change: KnobChange, earlier: Any, current: Any) -> bool:
    """Setting the knob back to ``earlier`` moves it the way ``change`` restores (any way without a direction)."""
    if earlier is None or earlier == current:
        return False
    if change.direction is None:
        return True
    try:
        return bool(earlier > current if change.direction == "up" else earlier < current)
    except TypeError:
        return False


def resolve_knob(change: KnobChange, current: Any, healthy: Any, pushed_from: Any = None) -> Any:
    """The value ``change`` sets, given the knob's current and last-healthy values; ``pushed_from``:
    the knob's value before the last change the loop did not make, however long ago (a restore
    that finds no drift since the healthy checkpoint undoes that change before any fallback)."""
    if change.op == "set":
        value = change.value
    elif change.op == "scale":
        value = current * change.factor
    else:  # restore
        drifted = _undoes(change, healthy, current)
        if not drifted and _undoes(change, pushed_from, current):
            healthy, drifted = pushed_from, True
        if drifted:
            value = healthy
        elif change.fallback_value is not None:
            value = change.fallback_value
        else:
            value = current * (change.fallback_factor or 1.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if change.rel_bounds and isinstance(healthy, (int, float)) and healthy > 0:
            value = min(max(value, healthy * change.rel_bounds[0]), healthy * change.rel_bounds[1])
        if change.abs_bounds:
            value = min(max(value, change.abs_bounds[0]), change.abs_bounds[1])
        if isinstance(current, int) and not isinstance(current, bool):
            value = int(round(value))
    return value


def _below_ceiling(knob: str, value: Any, current: Any, ceilings: dict[str, float]) -> Any:
    """``value``, except that a raise stops at the knob's ceiling (never below the current value)."""
    ceiling = ceilings.get(knob)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, current, ceiling))
    if ceiling is None or not numeric or value <= current:
        return value
    return max(min(value, ceiling), current)


class Remediator:
    """Chooses the next rung for an incident.

    ``generic=True`` is the baseline that ignores the diagnosis: every alarm gets
    "roll back and halve the learning rate". ``blind_interventions``: how many incidents per run that
    nobody can explain (no diagnosis, no knob change to undo) get the unknown ladder; by default none
    (such an alarm is reported, not acted on: a blind LR cut on a healthy run does harm).
    """

    def __init__(
        self,
        max_interventions: int = 3,
        min_confidence: float = 0.0,
        generic: bool = False,
        playbook: dict[str, tuple[Rung, ...]] | None = None,
        drift_first: bool = True,
        switch_confidence: float = 0.8,
        blind_interventions: int = 0,
    ):
        self.drift_first = drift_first and not generic
        # escalating an incident already being repaired as type T: a different diagnosis replaces T
        # only at this probability (a repair changes the signals the diagnoser reads)
        self.switch_confidence = switch_confidence
        self.max_interventions = max_interventions
        self.min_confidence = min_confidence
        self.generic = generic
        self.blind_interventions = blind_interventions
        self.playbook = playbook if playbook is not None else PLAYBOOK
        self.reset()

    def reset(self) -> None:
        self.interventions = 0
        self._type: str | None = None
        self._rung = -1
        self._chosen: Diagnosis | None = None  # the diagnosis that made ``_type`` the type being repaired
        self._blind_acted = 0
        self._before_plan: tuple[int, str | None, int, Diagnosis | None, int] = (0, None, -1, None, 0)
        self._ceilings: dict[str, float] = {}
        self._pushed_from: dict[str, Any] = {}

    def withdraw(self) -> None:
        """The last plan was not carried out: it leaves no trace (budget, rung reached, blind interventions)."""
        self.interventions, self._type, self._rung, self._chosen, self._blind_acted = self._before_plan

    def diagnosis_behind(self, fault_type: str | None) -> Diagnosis | None:
        """The diagnosis that made ``fault_type`` the type being repaired (``None`` when it is not): an escalation
        that keeps the type on an unsure new diagnosis still rests on it."""
        return self._chosen if fault_type is not None and fault_type == self._type else None

    @property
    def exhausted(self) -> bool:
        return self.interventions >= self.max_interventions

    def diagnosed_type(self, diagnosis: Diagnosis | None) -> str | None:
        top = diagnosis.top if diagnosis is not None else None
        if top is None or top.probability < self.min_confidence or top.fault_type not in self.playbook:
            return None
        return top.fault_type

    def blind_budget_used(self, diagnosis: Diagnosis | None) -> bool:
        """True when ``diagnosis`` explains nothing and the run's blind (unknown-ladder) interventions are
        spent: LR cuts on a signal nobody can explain do more harm than good."""
        return (
            not self.generic
            and self._blind_acted >= self.blind_interventions
            and self.diagnosed_type(diagnosis) is None
        )

    def _ladder(self, fault_type: str | None) -> tuple[Rung, ...]:
        if self.generic:
            return GENERIC_LADDER
        return self.playbook.get(fault_type, UNKNOWN_LADDER) if fault_type else UNKNOWN_LADDER

    @staticmethod
    def feasible(rung: Rung, caps: Capabilities) -> Rung | None:
        """``rung`` reduced to what the trainer supports, or ``None`` when it cannot act."""
        if rung.backup and rung.backup not in caps.backups:
            return None
        if rung.halt and not caps.halt:
            return None
        knobs = tuple(k for k in rung.knobs if k.knob in caps.knobs)
        if rung.knobs and not knobs:
            return None  # a knob rung with none of its knobs is no repair
        return replace(rung, knobs=knobs, rollback=rung.rollback and caps.rollback)

    def plan(
        self,
        diagnosis: Diagnosis | None,
        caps: Capabilities,
        current: dict[str, Any],
        healthy: dict[str, Any],
        escalate: bool = False,
        ceilings: dict[str, float] | None = None,
        pushed_from: dict[str, Any] | None = None,
    ) -> Plan | None:
        """The next rung's actions, or ``None`` when the budget or the ladder is used up.

        ``ceilings``: a knob change that *raises* a knob never takes it above its ceiling (the
        controller passes the learning rate the user configured: a misdiagnosis, or an alarm
        left over after a repair, must never push the LR past it). ``pushed_from``: each knob's
        value before the last change the loop did not make (see :func:`resolve_knob`).
        """
        self._ceilings = ceilings or {}
        self._pushed_from = pushed_from or {}
        self._before_plan = (self.interventions, self._type, self._rung, self._chosen, self._blind_acted)
        if self.exhausted:
            return None
        if self.drift_first and not escalate and self.feasible(DRIFT_RUNG, caps) is not None:
            drifted = {k for k, v in healthy.items() if k in current and k in caps.knobs and current[k] != v}
            if drifted:  # a new incident right after a knob change: undo the change first, then the ladder
                # the diagnosis stays the type being repaired (before its first rung): if undoing the change does
                # not clear the anomaly, an unsure new diagnosis does not replace it (:meth:`_next_rung`)
                self._type, self._rung = self.diagnosed_type(diagnosis), -1
                self._chosen = diagnosis if self._type is not None else None
                self.interventions += 1
                actions = self._actions(DRIFT_RUNG, diagnosis, current, healthy, self._ceilings, self._pushed_from)
                return Plan("knob_drift", -1, DRIFT_RUNG, actions, diagnosed_type=self.diagnosed_type(diagnosis))
        fault_type, start = self._next_rung(diagnosis, escalate)
        if not escalate and self.blind_budget_used(diagnosis):
            return None
        ladder = self._ladder(fault_type)
        for index in range(start, len(ladder)):
            rung = self.feasible(ladder[index], caps)
            if rung is None:
                continue
            if fault_type != self._type or self._chosen is None:
                self._chosen = diagnosis if fault_type is not None else None
            self._type, self._rung = fault_type, index
            self._blind_acted += int(fault_type is None and not self.generic)
            self.interventions += 1
            actions = self._actions(rung, diagnosis, current, healthy, self._ceilings, self._pushed_from)
            return Plan(fault_type, index, rung, actions, diagnosed_type=fault_type)
        return None

    def _next_rung(self, diagnosis: Diagnosis | None, escalate: bool) -> tuple[str | None, int]:
        """(type, first rung index) of the ladder to climb: the same fault again goes on from the last rung;
        an escalation keeps the type being repaired unless the new diagnosis is sure (``switch_confidence``)."""
        fault_type = None if self.generic else self.diagnosed_type(diagnosis)
        top = diagnosis.top if diagnosis is not None else None
        unsure = top is not None and top.probability < self.switch_confidence
        if escalate and self._type is not None and fault_type not in (None, self._type) and unsure:
            fault_type = self._type  # an unsure new hypothesis does not replace the one being repaired
        if self.generic:
            return fault_type, 0
        if fault_type is not None and fault_type == self._type:
            return fault_type, self._rung + 1  # the same fault again: the last rung was not enough
        if escalate and fault_type is None and (self._rung >= 0 or self._type is not None):
            return self._type, self._rung + 1  # (after an undone knob change: the diagnosed type's first rung)
        return fault_type, 0

    def halt_plan(self, fault_type: str, diagnosis: Diagnosis | None, caps: Capabilities) -> Plan | None:
        """``fault_type``'s last rung when it halts and the trainer can take it (``None`` otherwise), whatever the
        intervention budget: a halt repairs nothing, it stops the run on its last healthy weights."""
        ladder = self._ladder(fault_type)
        rung = self.feasible(ladder[-1], caps)
        if rung is None or not rung.halt:
            return None
        self._type, self._rung, self._chosen = fault_type, len(ladder) - 1, diagnosis
        actions = self._actions(rung, diagnosis, {}, {})
        return Plan(fault_type, len(ladder) - 1, rung, actions, diagnosed_type=fault_type)

    @staticmethod
    def _actions(
        rung: Rung,
        diagnosis: Diagnosis | None,
        current: dict[str, Any],
        healthy: dict[str, Any],
        ceilings: dict[str, float] | None = None,
        pushed_from: dict[str, Any] | None = None,
    ) -> list[Action]:
        why = rung.reason + (f" ({diagnosis.summary})" if diagnosis is not None and diagnosis.summary else "")
        actions: list[Action] = []
        if rung.backup:
            actions.append(Action(kind=f"backup_{rung.backup}", reason=why))
        if rung.rollback:
            actions.append(Action(kind="rollback", reason=why))
        drifted = {k: v for k, v in healthy.items() if k in current and current[k] != v} if rung.restore_drifted else {}
        # (knobs the trainer cannot set never appear in ``current``: it holds only readable, settable knobs)
        for knob, value in drifted.items():
            actions.append(
                Action(
                    kind="set_knob",
                    knob=knob,
                    value=value,
                    previous=current[knob],
                    reason=f"restore {knob}: changed since the last healthy checkpoint; {rung.reason}",
                )
            )
        for change in [] if drifted else rung.knobs:
            try:
                value = resolve_knob(
                    change, current.get(change.knob), healthy.get(change.knob), (pushed_from or {}).get(change.knob)
                )
            except TypeError:  # the knob cannot be read on this trainer: nothing to scale
                continue
            value = _below_ceiling(change.knob, value, current.get(change.knob), ceilings or {})
            actions.append(
                Action(
                    kind="set_knob",
                    knob=change.knob,
                    value=value,
                    previous=current.get(change.knob),
                    reason=f"{change.op} {change.knob}: {rung.reason} {rung.source}",
                )
            )
        if rung.halt:
            actions.append(Action(kind="halt", reason=why))
        return actions
