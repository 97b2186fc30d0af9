"""The remediation policy: when the closed loop acts, and how far it rolls back.

Every rule is a small pure function over plain data (the facts it needs, as a dataclass or plain
values) and the loop's settings (:class:`ControllerConfig`), so each can be tested without a trainer.
:class:`rftfm.fm.loop.Controller` gathers the facts and follows the verdicts; the remediation
evaluation reads its confirmation rule from here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from rftfm.fm.playbook import PLAYBOOK, UPSTREAM_SIGNALS, ends_in_halt_only, ladder
from rftfm.fm.types import Action, Diagnosis, SignalEvidence

#: knob -> (step of the change, value before it): a change the loop did not make (a configuration push)
Pushes = Mapping[str, tuple[int, Any]]


@dataclass
class ControllerConfig:
    """The loop's cadence and the thresholds of its rules."""

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
    record_steps: int = 1  # steps between two logged records (the loop measures it: a trainer's logging_steps); the
    # confirmation windows above count logged records, so each spans this many times its steps
    max_history: int = 4096  # per-step state kept (diagnoser history, accuracies): bounded memory on long runs
    rollback_needs_regression: bool = True  # a knob rung rolls back only when eval accuracy fell since the checkpoint
    regression_margin: float = 0.03  # ... by more than this (absolute); unknown accuracy: roll back
    saturated_accuracy: float = 0.98  # ... or when it sits at this ceiling (where it cannot fall) and the rollback
    # can be replayed
    peak_drop: float = 0.1  # ... or when it lies this far below its best since the checkpoint (2-step means): the
    # progress a rollback would discard is already lost (a run still learning fast can fall and stay above an old
    # checkpoint)
    explain_min_z: float = 2.0  # evidence weaker than this |z| does not stop an alarm being "explained"
    halt_needs_regression: bool = True  # a knob ladder's final halt only when eval accuracy fell since the checkpoint
    halt_confidence: float = 0.8  # a code fault halts on a diagnosis this sure (or on a measured fall in eval accuracy)
    act_confidence_without_eval: float = 0.5  # ... and any rung acts (but undoing a knob push) only at this one
    eval_every: int = 10  # with an eval callable: evaluate every this many steps (and when a decision needs it)
    drift_window: int = 12  # a knob change (not made by the loop) this many logged records before an incident is
    # drift to undo (``drift_steps``: in steps; one record a step, 12 steps)
    push_alarm_threshold: float = 0.5  # ... and while one is in effect, the detector alarms at this score (its
    # calibrated threshold is 1): a change nobody explained doubles the odds that what follows is a fault
    replay_rollbacks: bool = True  # after a rollback, extend the run by the steps it discarded (resume semantics) ...
    max_replay_fraction: float = 0.5  # ... up to this fraction of the planned steps in all

    @property
    def confirm_steps(self) -> int:
        """``confirm_window`` logged records, in steps."""
        return self.confirm_window * max(self.record_steps, 1)

    @property
    def unknown_confirm_steps(self) -> int:
        """``unknown_confirm_window`` logged records, in steps."""
        return self.unknown_confirm_window * max(self.record_steps, 1)

    @property
    def drift_steps(self) -> int:
        """``drift_window`` logged records, in steps: a trainer that logs every 10 steps shows a push's effect one
        record later, 10 steps on, and an incident two records after it is 20 steps from the push."""
        return self.drift_window * max(self.record_steps, 1)


def per_record(cfg: ControllerConfig, record_steps: int) -> ControllerConfig:
    """``cfg`` with the run's measured steps between logged records (itself where they are already so): a trainer that
    logs every 10 steps has one record where the confirmation rule expects three steps."""
    return cfg if record_steps == cfg.record_steps else replace(cfg, record_steps=record_steps)


# --- acting on an alarm ------------------------------------------------------------------------
@dataclass(frozen=True)
class AlarmFacts:
    """What the confirmation rule reads of an alarm."""

    step: int
    score: float
    threshold: float


def is_strong(alarm: AlarmFacts, cfg: ControllerConfig) -> bool:
    """Score at least ``strong_alarm`` x threshold (a zero threshold is never strong)."""
    return alarm.threshold > 0 and alarm.score >= cfg.strong_alarm * alarm.threshold


def confirmed(alarm: AlarmFacts, alarm_steps: Iterable[int], cfg: ControllerConfig, after_push: bool = False) -> bool:
    """A single weak alarm is only reported; acting needs a strong one, ``confirm_alarms`` alarms
    (``alarm_steps``, this one included) within ``confirm_window`` steps, or a recent knob push."""
    recent = [s for s in alarm_steps if alarm.step - cfg.confirm_steps < s <= alarm.step]
    return is_strong(alarm, cfg) or len(recent) >= cfg.confirm_alarms or after_push


def pushed_recently(pushes: Pushes, knobs_now: Mapping[str, Any], step: int, cfg: ControllerConfig) -> bool:
    """A knob the loop did not turn changed within ``drift_window`` logged records and still has the pushed value:
    a suspect for any alarm, so one alarm is enough to act on (healthy runs get no pushes)."""
    return bool(recent_pushes(pushes, knobs_now, step, cfg))


def recent_pushes(pushes: Pushes, knobs_now: Mapping[str, Any], step: int, cfg: ControllerConfig) -> list[str]:
    """The knobs :func:`pushed_recently` is about: changed by someone else within ``drift_window`` logged records,
    still at the pushed value (what the diagnoser is told, :meth:`rftfm.fm.diagnose.Diagnoser.know_pushed`)."""
    recent = {name: before for name, (at, before) in pushes.items() if at > step - cfg.drift_steps}
    return [name for name, before in recent.items() if knobs_now.get(name, before) != before]


def alarm_threshold(after_push: bool, cfg: ControllerConfig) -> float:
    """The detector's alarm threshold for this step: lowered while a knob push is in effect (healthy runs get none,
    so their false-alarm budget is unchanged)."""
    return cfg.push_alarm_threshold if after_push else 1.0


def rollback_before(
    step: int, alarm_steps: Iterable[int], since_steps: Sequence[int], pushes: Pushes, cfg: ControllerConfig
) -> int:
    """The newest step a new incident's rollback checkpoint may have.

    The first deviating step is the evidence's onset (``since_steps``), else ``default_lookback`` steps
    before the first alarm in the confirmation window, never more than ``max_lookback`` steps before it
    (slow drifts would roll back everything); the checkpoint lies ``rollout_lag`` steps further back (that
    step's weights generated the deviating rollouts), and before any recent knob push (the prime suspect).
    """
    window = [s for s in alarm_steps if s > step - cfg.confirm_steps] or [step]
    first = min(since_steps) if since_steps else min(window) - cfg.default_lookback
    first = min(max(first, min(window) - cfg.max_lookback, 1), step)
    before = first - 1 - cfg.rollout_lag
    pushed = [at - 1 for at, _ in pushes.values() if at > step - cfg.drift_steps]
    return max(min([before, *pushed]), 0)


@dataclass(frozen=True)
class NewIncident:
    """What decides whether a confirmed alarm opens a repair."""

    step: int
    explained_by_diagnosis: bool  # the diagnosis names a playbook type (or the remediator is the generic baseline)
    drifted: bool  # a knob differs from the rollback checkpoint's, not counting the loop's own changes
    unexplained_alarms: int  # alarms within ``unknown_confirm_window`` steps, this one included
    blind_budget_used: bool  # the run's one intervention on an alarm nobody could explain is spent
    max_steps: int | None  # the run's length, when the trainer says it
    probability: float | None = None  # the diagnosis' probability for its top type
    has_eval: bool = True  # the run has eval accuracy (its records carry it, or an eval callable measures it)
    generic: bool = False  # the generic baseline acts on every alarm, whatever the diagnosis
    escalating: bool = False  # the alarm came back after a rung: the next rung, not a new incident


@dataclass(frozen=True)
class Hold:
    """An alarm the loop reports but does not act on."""

    note: str  # the timeline's text
    reason: str = ""  # the recorded outcome's reason ("" records no outcome)
    detail: str = "reported, not acted on"
    timeline_kind: Literal["plan", "outcome"] = "plan"
    alert_only: bool = False  # the loop stops acting for the rest of the run


def hold_back(case: NewIncident, cfg: ControllerConfig) -> Hold | None:
    """Why a confirmed alarm opens no repair, or ``None`` (go ahead and plan one).

    An alarm nobody can explain (no diagnosis, no knob drift) waits until it persists, then is reported
    (unless the remediator allows blind interventions); without any eval accuracy to check a repair against,
    a diagnosis must be confident (``act_confidence_without_eval``) unless a knob push explains the alarm
    (this one holds for the next rung of an incident too); and no repair starts when fewer steps remain
    than its revalidation needs.
    """
    unexplained = not case.explained_by_diagnosis and not case.drifted and not case.escalating
    if unexplained and case.unexplained_alarms < cfg.unknown_confirm_alarms:
        return Hold("unexplained alarm, no knob changed: alert only until it persists")
    if case.blind_budget_used and not case.drifted and not case.escalating:
        return Hold(
            "unexplained alarm again: reported, not acted on (one blind intervention per run)",
            "unexplained alarm; the run's one blind intervention is spent",
        )
    unsure = (case.probability or 0.0) < cfg.act_confidence_without_eval
    if unsure and not (case.has_eval or case.drifted or case.generic):
        p = case.probability or 0.0
        return Hold(
            f"diagnosis at p={p:.2f} and no held-out evaluation: reported, not acted on",
            f"diagnosis at p={p:.2f} < {cfg.act_confidence_without_eval}, no eval accuracy to check a repair",
        )
    if case.max_steps is not None and case.max_steps - case.step < cfg.revalidate_steps and not case.escalating:
        return Hold(
            f"{case.max_steps - case.step} step(s) left: too late to act and revalidate; reported",
            "too close to the end of training to act and revalidate",
        )
    return None


NO_RUNG_LEFT = Hold(
    "no further action available: alert-only",
    "no rung left or intervention budget used up",
    detail="alert-only from here",
    timeline_kind="outcome",
    alert_only=True,
)


@dataclass(frozen=True)
class HaltCase:
    """A planned halt, and the evidence for it."""

    fault_type: str | None  # the planned ladder's type (``None``: nobody could explain the alarm)
    code_fault: bool  # the ladder has no knob rung: no knob can repair the fault
    probability: float | None  # the diagnosis' probability for ``fault_type`` (:func:`halt_probability`)
    accuracy_then: float | None  # eval accuracy at the rollback checkpoint (the latest at or before it)
    accuracy_now: float | None  # ... and now (the last two steps' mean)
    pending: bool = False  # the diagnosis rests on numbers missing from its own record (:func:`one_record_missing`)


def one_record_missing(diagnosis: Diagnosis | None) -> bool:
    """Whether the diagnosis' non-finite evidence (a loss, grad norm, KL or entropy gone) is its own record's alone:
    what an fp16 loss scaler's skipped step logs too, and what the next record confirms or clears."""
    if diagnosis is None:
        return False
    since = [e.since_step for e in diagnosis.evidence if e.non_finite]
    return bool(since) and all(s == diagnosis.step for s in since)


def halt_probability(diagnosis: Diagnosis | None, fault_type: str | None) -> float | None:
    """The probability a halt for ``fault_type`` rests on: the diagnosis' mass on the types of its family whose
    ladder is the same (the loop does the same thing whichever of them it is, e.g. an advantage sign bug or a
    broken advantage normalisation, both "rollback + halt"); ``None`` when it does not rank ``fault_type``."""
    ranked = diagnosis.ranked if diagnosis is not None else []
    own = next((h for h in ranked if h.fault_type == fault_type), None)
    if own is None:
        return None
    same = ladder(fault_type)
    return sum(h.probability for h in ranked if h.family == own.family and ladder(h.fault_type) == same)


def strongest_halt_probability(fault_type: str | None, *diagnoses: Diagnosis | None) -> float:
    """The largest :func:`halt_probability` of ``fault_type`` over ``diagnoses`` (0 where none ranks it): the current
    diagnosis and the one that made it the type being repaired -- an escalation that kept the type on an unsure new
    diagnosis still rests on the diagnosis that named it (:meth:`rftfm.fm.remediate.Remediator.diagnosis_behind`)."""
    return max((halt_probability(d, fault_type) or 0.0 for d in diagnoses), default=0.0)


def settled_code_fault(
    diagnosis: Diagnosis | None, alarm: AlarmFacts, alarm_steps: Iterable[int], cfg: ControllerConfig
) -> str | None:
    """The code fault a confirmed alarm's diagnosis settles (its top type has no knob rung and
    :func:`halt_probability` puts p >= ``halt_confidence`` on it), else ``None``. After the loop stood down
    (alert-only: a halt refused on a weaker diagnosis, or no rung left) this is the one alarm it still acts on, with
    the halt it would have made had the evidence come first: a numerical blow-up diagnosed at p = 1 once its numbers
    turned NaN, a broken advantage invariant. Standing down meant "not sure yet", not "never"."""
    top = diagnosis.top if diagnosis is not None else None
    if top is None or top.fault_type not in PLAYBOOK or not ends_in_halt_only(top.fault_type):
        return None
    sure = (halt_probability(diagnosis, top.fault_type) or 0.0) >= cfg.halt_confidence
    return top.fault_type if sure and confirmed(alarm, alarm_steps, cfg) else None


def halt_refused(case: HaltCase, cfg: ControllerConfig) -> Hold | None:
    """A halt throws the rest of the run away, so it needs strong, diagnosed evidence; otherwise the
    loop reports the incident and goes alert-only (``None``: halt).

    * an alarm nobody could explain never halts a run;
    * a code fault (a wrong verifier, an advantage bug: no knob repairs it) halts on a diagnosis at
      probability >= ``halt_confidence`` (:func:`halt_probability`: summed over the types of its family that
      end the same way), or on a weaker one when eval accuracy fell since the checkpoint; a weaker one resting on
      numbers missing from the alarm's record alone is reported without standing down (``pending``);
    * a knob-repairable fault whose knob rungs are used up (or unavailable) halts only when eval accuracy
      fell since the checkpoint (``halt_needs_regression``): stopping a run that is not getting worse, or
      that nobody can show to be, only loses the steps still to come.
    """

    def refuse(note: str, why: str, detail: str = "alert-only from here") -> Hold:
        return Hold(
            f"{note}: not halted, alert-only",
            f"{case.fault_type or 'unexplained'}: {why}",
            detail=detail,
            timeline_kind="outcome",
            alert_only=True,
        )

    if case.fault_type is None:
        return refuse("no diagnosis", "a halt needs a diagnosed fault")
    held = accuracy_holds(case.accuracy_then, case.accuracy_now, cfg)
    fell = held is None and case.accuracy_then is not None and case.accuracy_now is not None
    if case.code_fault:
        if (case.probability or 0.0) >= cfg.halt_confidence or fell:
            return None
        if case.pending:  # not "not sure": not yet -- the next alarm is judged afresh
            return Hold(
                f"diagnosis at p={case.probability or 0.0:.2f} on numbers missing from this record only: not halted",
                f"{case.fault_type}: numbers missing from one record; judged again at the next alarm",
                timeline_kind="outcome",
            )
        return refuse(
            f"diagnosis at p={case.probability or 0.0:.2f} and no measured fall in eval accuracy",
            f"a halt needs a diagnosis at p >= {cfg.halt_confidence} or eval accuracy that fell",
        )
    if not cfg.halt_needs_regression:
        return None
    if held is not None:
        return refuse(
            f"rungs used up, eval accuracy holds ({held:.3f})",
            "no knob rung left that this trainer has; no halt while eval accuracy holds",
            detail=f"alert-only from here (eval accuracy {held:.3f})",
        )
    if case.accuracy_then is None or case.accuracy_now is None:
        return refuse(
            "rungs used up, no eval accuracy to show the run getting worse",
            "no knob rung left that this trainer has; no halt without a measured fall in eval accuracy",
        )
    return None


def changes_nothing(rung_sets_knobs: bool, knob_actions: int, unchanged: Sequence[str]) -> Hold | None:
    """A knob rung whose every change would leave the knob as it is (the restore finds the healthy value
    already set) does not match the trainer: the diagnosed cause is not in its settings. Reported, not acted
    on (a rollback alone would only replay the same steps)."""
    if not rung_sets_knobs or knob_actions or not unchanged:
        return None
    return Hold(
        f"{', '.join(unchanged)} already at the value the repair would set: reported, not acted on",
        f"the diagnosed cause is not in the trainer's settings ({', '.join(unchanged)} unchanged)",
    )


# --- knobs -----------------------------------------------------------------------------------
def new_pushes(
    current: Mapping[str, Any],
    seen: Mapping[str, Any],
    loop_knobs: Mapping[str, Any],
    pushes: Pushes,
    step: int,
    cfg: ControllerConfig,
) -> dict[str, tuple[int, Any]]:
    """Knob changes since the last step that the loop did not make: knob -> (step, value before). A knob
    pushed again within ``drift_window`` logged records keeps its first push (the value before that is the healthy
    one)."""
    out = {}
    for name, value in current.items():
        before = seen.get(name, value)
        if value != before and loop_knobs.get(name, before) != value:
            earlier = pushes.get(name)
            if earlier is None or earlier[0] <= step - cfg.drift_steps:
                out[name] = (step, before)
    return out


def healthy_knobs(
    checkpoint_knobs: Mapping[str, Any],
    pushes: Pushes,
    loop_knobs: Mapping[str, Any],
    incident_start: int,
    cfg: ControllerConfig,
) -> dict[str, Any]:
    """Knob values of the rollback checkpoint; for a knob something else changed within ``drift_window``
    logged records of the incident, its value before that change (the checkpoint may postdate it); the loop's own
    later settings on top (a change the loop made is a repair, never drift to undo)."""
    recent = {name: before for name, (at, before) in pushes.items() if at > incident_start - cfg.drift_steps}
    return {**checkpoint_knobs, **recent, **loop_knobs}


def drifted(current: Mapping[str, Any], healthy: Mapping[str, Any]) -> bool:
    """A knob differs from its healthy value."""
    return any(k in current and current[k] != v for k, v in healthy.items())


# --- explaining an alarm after a repair ----------------------------------------------------------
@dataclass(frozen=True)
class Lag:
    """After a knob pushed mid-run was undone: the incident's own deviations (signal, direction), which
    linger while the run catches up, and the eval accuracy it must not fall below."""

    signature: frozenset[tuple[str, str]] = frozenset()
    accuracy: float | None = None


def lag_after(
    actions: Sequence[Action],
    restores_drift: bool,
    pushes: Pushes,
    recent_evidence: Iterable[tuple[int, frozenset[tuple[str, str]]]],
    incident_start: int,
    accuracy: float | None,
    cfg: ControllerConfig,
) -> Lag | None:
    """The lag to expect after a rung that undid a pushed knob: the evidence (signal, direction) of the
    alarms in the incident's confirmation window, and the eval accuracy at the time; ``None`` otherwise."""
    if not (restores_drift and any(a.kind == "set_knob" and a.knob in pushes for a in actions)):
        return None
    window = [ev for s, ev in recent_evidence if s > incident_start - cfg.confirm_steps]
    return Lag(frozenset().union(*window), accuracy)


def explained(
    evidence: Sequence[SignalEvidence],
    repaired_type: str | None,
    lag: Lag,
    accuracy_now: float | None,
    cfg: ControllerConfig,
) -> str | None:
    """Why an alarm after a repair is not a new symptom (``None``: it is one).

    * upstream: its strong evidence lies only in the repaired type's upstream signals (a signal listed
      beside them with |z| < ``explain_min_z`` is noise, not a new symptom);
    * lag: a knob pushed mid-run was undone, so the trainer runs on its healthy configuration again, and
      the evidence only repeats the incident's own deviations (same signal, same direction) while eval
      accuracy has not fallen since: the run is still catching up.
    """
    if not evidence:
        return None
    strong = [e for e in evidence if e.z is None or abs(e.z) >= cfg.explain_min_z] or list(evidence)
    upstream = UPSTREAM_SIGNALS.get(repaired_type or "")
    if upstream and all(e.signal in upstream for e in strong):
        return "the known upstream cause"
    if lag.signature and all((e.signal, e.direction) in lag.signature for e in strong):
        if accuracy_now is not None and (lag.accuracy is None or accuracy_now >= lag.accuracy - cfg.regression_margin):
            return "the lag of an undone knob change"
    return None


# --- eval accuracy ---------------------------------------------------------------------------------
def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def recent_accuracy(accuracy_at: Mapping[int, float | None], step: int) -> float | None:
    """Mean eval accuracy of ``step`` and the step before (``None`` when neither has a finite one)."""
    recent = [a for a in (accuracy_at.get(step - 1), accuracy_at.get(step)) if _finite(a)]
    return sum(recent) / len(recent) if recent else None  # type: ignore[arg-type]


def accuracy_at_or_before(accuracy_at: Mapping[int, float | None], step: int) -> float | None:
    """The latest finite eval accuracy at or before ``step`` (that of a checkpoint taken between two
    evaluations is the one before it); ``None`` when there is none."""
    for at, value in reversed(accuracy_at.items()):
        if at <= step and _finite(value):
            return value
    return None


#: The share of a run's wall time its checkpoints may take before the end-of-run report suggests spacing them out.
CHECKPOINT_BUDGET = 0.05


def checkpoint_every_within(
    checkpoint_seconds: float | None, wall_seconds: float | None, every: int, budget: float = CHECKPOINT_BUDGET
) -> int | None:
    """The checkpoint interval that would have kept a run's checkpoints within ``budget`` of its wall time, when
    at ``every`` they took more (``None``: within it, or unknown). A large model's checkpoint can cost more than
    a step; the interval stays the user's choice (a rollback then reaches further back), since one that followed
    measured times would make the loop's decisions depend on the machine's load."""
    if not checkpoint_seconds or not wall_seconds or checkpoint_seconds <= budget * wall_seconds:
        return None
    return math.ceil(every * checkpoint_seconds / (budget * wall_seconds))


def due(previous_step: int, step: int, every: int) -> bool:
    """A multiple of ``every`` lies in (previous_step, step]: a periodic task (checkpoint, evaluation) is
    due at this logged step even when the trainer logs only every few steps."""
    return step // every > previous_step // every if step > previous_step else step % every == 0


def accuracy_holds(then: float | None, now: float | None, cfg: ControllerConfig) -> float | None:
    """``now`` when it has not fallen by more than ``regression_margin`` below ``then`` (the accuracy at
    the rollback checkpoint), else ``None`` (also when either is unknown)."""
    if not _finite(then) or now is None:
        return None
    return now if now >= then - cfg.regression_margin else None  # type: ignore[operator]


def best_two_step_mean(accuracy_at: Mapping[int, float | None], after: int, before: int) -> float | None:
    """The best mean of two consecutive steps' eval accuracy for steps ``after`` < s < ``before``."""
    means = []
    for step in range(after + 1, before):
        pair = [a for a in (accuracy_at.get(step - 1), accuracy_at.get(step)) if _finite(a)]
        if pair:
            means.append(sum(pair) / len(pair))  # type: ignore[arg-type]
    return max(means) if means else None


# --- rolling back --------------------------------------------------------------------------------
def resumes_before_push(actions: Sequence[Action], pushes: Pushes, checkpoint_step: int) -> bool:
    """The rung sets back a knob that somebody else changed, and the rollback checkpoint predates the
    change: replayed on their own batches, the discarded steps then train as if the push never happened
    (a rollback costs compute only; there is no progress for an accuracy test to protect)."""
    for action in actions:
        pushed = pushes.get(action.knob or "") if action.kind == "set_knob" else None
        if pushed is not None and action.value == pushed[1] and checkpoint_step < pushed[0]:
            return True
    return False


def replay_budget(planned_steps: int | None, replayed: int, cfg: ControllerConfig) -> int:
    """Steps the run may still be extended by (``max_replay_fraction`` of the planned steps in all)."""
    return int(cfg.max_replay_fraction * (planned_steps or 0)) - replayed


@dataclass(frozen=True)
class RollbackCase:
    """A rung's rollback, and what the run's eval accuracy says about it."""

    halt_rung: bool  # the rung ends in a halt (the run stops on the restored weights)
    accuracy_then: float | None  # at the rollback checkpoint
    accuracy_now: float | None  # the last two steps' mean
    peak: float | None  # best two-step mean since the checkpoint (see best_two_step_mean)
    replayable: bool  # every step the rollback discards fits in the replay budget
    undoes_earlier_push: bool  # see resumes_before_push


def rollback_case(
    actions: Sequence[Action],
    halt_rung: bool,
    checkpoint_step: int | None,
    accuracy_at: Mapping[int, float | None],
    step: int,
    pushes: Pushes,
    replayable: bool,
) -> RollbackCase:
    """The facts of a rollback at ``step`` to the checkpoint of ``checkpoint_step`` (``None``: none left)."""
    if checkpoint_step is None:
        return RollbackCase(halt_rung, None, recent_accuracy(accuracy_at, step), None, False, False)
    return RollbackCase(
        halt_rung,
        accuracy_at_or_before(accuracy_at, checkpoint_step),
        recent_accuracy(accuracy_at, step),
        best_two_step_mean(accuracy_at, checkpoint_step, step - 1),
        replayable,
        resumes_before_push(actions, pushes, checkpoint_step),
    )


def skip_rollback(case: RollbackCase, cfg: ControllerConfig) -> float | None:
    """The eval accuracy to keep when the run has not regressed since the checkpoint (a rollback would
    only discard progress), else ``None``: roll back.

    A halting rung always rolls back; so does a run whose accuracy is unknown, one at its ceiling when
    the rollback can be replayed (accuracy there cannot show the damage the weights may carry: a collapsed
    entropy, a policy that learned to avoid a failing tool), one that fell ``peak_drop`` below its best
    since the checkpoint (the progress is lost already), and a replayable rung that undoes a push the
    checkpoint predates.
    """
    if not cfg.rollback_needs_regression or case.halt_rung:
        return None
    held = accuracy_holds(case.accuracy_then, case.accuracy_now, cfg)
    if held is None or (held >= cfg.saturated_accuracy and case.replayable):
        return None
    fell = case.peak is not None and held < case.peak - cfg.peak_drop
    if fell or (case.replayable and case.undoes_earlier_push):
        return None
    return held


# --- revalidation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    result: Literal["kept", "escalated"]
    detail: str


def revalidation_verdict(
    alarmed: bool,
    steps_since_action: int,
    accuracies: Sequence[float | None],
    reference: float | None,
    cfg: ControllerConfig,
) -> Verdict | None:
    """After a rung: escalate on an alarm, or when the window's mean eval accuracy lies ``revert_drop``
    below the checkpoint's (the rung was not enough); keep it after ``revalidate_steps`` quiet steps;
    ``None`` while the window is still open. ``accuracies``: one per step of the window so far."""
    if alarmed:
        return Verdict("escalated", f"alarm again {steps_since_action} step(s) after the action")
    if len(accuracies) < cfg.revalidate_steps:
        return None
    known = [a for a in accuracies if a is not None]
    if reference is not None and known and sum(known) / len(known) < reference - cfg.revert_drop:
        mean = sum(known) / len(known)
        return Verdict("escalated", f"eval accuracy {mean:.2f} well below the checkpoint's {reference:.2f}")
    return Verdict("kept", f"no alarm for {len(accuracies)} steps")
