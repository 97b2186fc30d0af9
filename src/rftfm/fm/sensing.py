"""What the closed loop sees of a run: detector and diagnoser at the run's *effective* step.

Each step's features go into a bounded history (what the diagnoser reads) and the step record goes
through the detector, both at the effective step: after a rollback to a checkpoint of effective step
c the next step is c + 1 again, since detector and diagnoser profiles are indexed by step. Alarms
come back at the real step. A failing stage is reported through ``guard`` and never raises.

The loop's own learning-rate changes are taken out of what both read: the detector is told to expect the next
record's change; the history carries the learning rate the user's schedule gives (the logged one over the loop's
factors in effect), so the diagnoser never reads the loop's own LR cut as a configuration pushed down mid-run. A
change is measured from the knob's value in effect: after a rollback, the restored checkpoint's (undoing a push the
checkpoint predates changes nothing; a second cut after a rollback to before the first is a hundredfold one).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import polars as pl

from rftfm.fm import kl_coefficient
from rftfm.fm.features import HISTORY_SCHEMA, SCHEDULE, step_features
from rftfm.fm.ledger import Journal
from rftfm.fm.types import Alarm, Diagnosis
from rftfm.records import StepRecord, TrajectoryRecord

#: a history row's key for the product of the loop's own learning-rate factors in effect at that record (read here
#: only: not a column of :data:`HISTORY_SCHEMA`)
LOOP_LR_SCALE = "loop_lr_scale"

#: (stage, fn) -> (ok, fn's result): runs ``fn``, turning an exception into a recorded error
Guard = Callable[[str, Callable[[], Any]], tuple[bool, Any]]


class DetectorLike(Protocol):
    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None: ...
    def observe(self, step_record: StepRecord, trajectories: list[TrajectoryRecord]) -> Alarm | None: ...


class DiagnoserLike(Protocol):
    def diagnose(
        self,
        history: pl.DataFrame,
        run_id: str,
        step: int,
        task_group: str | None = None,
        model_size: str | None = None,
    ) -> Diagnosis: ...


class Sensing:
    """Detector, diagnoser and the features history of one run."""

    def __init__(
        self,
        detector: DetectorLike,
        diagnoser: DiagnoserLike | None,
        journal: Journal,
        guard: Guard,
        *,
        task_group: str | None,
        model_size: str | None,
        max_history: int,
    ):
        self.detector, self.diagnoser, self.journal, self.guard = detector, diagnoser, journal, guard
        self.run_id, self.task_group, self.model_size = journal.run_id, task_group, model_size
        self.history: deque[dict[str, Any]] = deque(maxlen=max_history)
        self.lr_scale = 1.0  # the loop's own learning-rate factors in effect (see the module docstring)
        self.lr_restored: float | None = None  # the learning-rate knob a rollback restored, until the next record
        self.know_invariants(False)  # a detector or diagnoser reused from another run does not carry it over
        self.know_schedule(False)
        self.know_on_policy(False)
        self.know_reward_weights(None)
        self.know_kl_coefficient(None)

    def know_invariants(self, known: bool) -> None:
        """Tell detector and diagnoser (those that take it) whether the run's estimator makes the advantage
        invariants hold, which arms them from the first record."""
        self._tell_both("know_invariants", known)

    def know_on_policy(self, known: bool) -> None:
        """Tell detector and diagnoser (those that take it) whether every optimiser step trains on rollouts of the
        current policy, so that a clip ratio above 0 is seen as rollouts from another policy."""
        self._tell_both("know_on_policy", known)

    def know_stochastic_reward(self, stochastic: bool) -> None:
        """Tell detector and diagnoser (those that take it) whether the run's reward is meant to score one completion
        differently from call to call, so that identical completions scored differently are no symptom."""
        self._tell_both("know_stochastic_reward", stochastic)

    def know_reward_weights(self, weights: dict[str, float] | None) -> None:
        """Tell detector and diagnoser (those that take it) the run's reward weights by function name, which arms the
        reward identity from the first record."""
        self._tell_both("know_reward_weights", weights)

    def know_kl_coefficient(self, configured: Any) -> None:
        """Tell detector and diagnoser (those that take it) the KL coefficient the trainer is configured with
        (:class:`~rftfm.fm.kl_coefficient.Configured`), against which the loss per unit of KL is judged."""
        self._tell_both("know_kl_coefficient", configured)

    def follow_kl_coefficient(self, knobs: dict[str, Any] | None) -> None:
        """The KL coefficient the trainer's knobs say at this record (``beta``, ``loss_type``,
        ``max_completion_length``; read every record, so a push of them, or the loop's own change, is followed;
        ``None``, or knobs without a beta -- a trainer whose beta cannot be set, such as TRL's without a separate
        reference model: nothing told, what the caller told stands)."""
        if knobs is None or "beta" not in knobs:
            return
        self.know_kl_coefficient(kl_coefficient.Configured.of_config(knobs))

    def _tell_both(self, method: str, known: Any) -> None:
        for stage, part in (("detect", self.detector), ("diagnose", self.diagnoser)):
            tell = getattr(part, method, None)
            if tell is not None:
                self.guard(stage, lambda tell=tell: tell(known))

    def know_schedule(self, jumps_by_design: bool) -> None:
        """Tell a detector that judges the learning rate's jumps whether the run's scheduler jumps by design."""
        self._tell_both("know_schedule", jumps_by_design)

    def knob_set(self, knob: str, previous: object, value: object) -> None:
        """The loop itself set ``knob`` from ``previous`` to ``value``: for the learning rate, a detector that judges
        the logged learning rate's jumps (:mod:`rftfm.fm.schedule`) takes that change out of the next record, and
        the history's learning rates from the next record on are divided by it. The change is measured from the
        knob's value in effect: ``previous``, read before the plan's actions, or what a rollback among them restored."""
        numbers = isinstance(previous, (int, float)) and isinstance(value, (int, float))
        base = self.lr_restored if self.lr_restored is not None else previous if numbers else None
        if knob != "learning_rate" or not numbers or base is None or not base > 0 or not value > 0:
            return
        factor = float(value) / float(base)
        self.lr_scale *= factor
        self.lr_restored = float(value) if self.lr_restored is not None else None
        tell = getattr(self.detector, "expect_learning_rate_change", None)
        if tell is not None:
            self.guard("detect", lambda: tell(factor))

    def reset_detector(self) -> None:
        self.guard("detect", lambda: self.detector.reset(self.run_id, self.task_group, self.model_size))

    def detect(
        self, record: StepRecord, trajectories: list[TrajectoryRecord], offset: int, threshold: float = 1.0
    ) -> tuple[bool, Alarm | None]:
        """The detector's verdict on the step ``record.step`` (real), which is ``record.step - offset`` effective;
        ``threshold``: the alarm threshold in the detector's score units, for a detector that has one to set."""
        step = record.step
        if hasattr(self.detector, "alarm_threshold"):
            self.detector.alarm_threshold = threshold
        effective = step - offset
        self.lr_restored = None  # from here the loop reads the knob again before it acts
        ok, feats = self.guard("features", lambda: step_features(record, trajectories))
        if feats is not None:
            if feats.get(SCHEDULE) is not None:
                feats[SCHEDULE] = feats[SCHEDULE] / self.lr_scale
            self.history.append({"run_id": self.run_id, "step": effective, **feats, LOOP_LR_SCALE: self.lr_scale})
        seen = record if effective == step else record.model_copy(update={"step": effective})
        ok, alarm = self.guard("detect", lambda: self.detector.observe(seen, trajectories))
        if ok and alarm is not None and offset:
            alarm = alarm.model_copy(
                update={
                    "step": step,
                    "evidence": [
                        e.model_copy(update={"since_step": None if e.since_step is None else e.since_step + offset})
                        for e in alarm.evidence
                    ],
                }
            )
        return ok, alarm

    def diagnose(self, step: int, offset: int, pushed: Sequence[str] = ()) -> Diagnosis | None:
        """The diagnoser's reading of the history at real step ``step`` (recorded), told the knobs pushed lately
        (``pushed``: :meth:`~rftfm.fm.diagnose.Diagnoser.know_pushed`), or ``None``."""
        if self.diagnoser is None:
            return None
        history = pl.DataFrame(self.history, schema=HISTORY_SCHEMA)
        diagnoser = self.diagnoser

        def read() -> Diagnosis:
            tell = getattr(diagnoser, "know_pushed", None)  # a diagnoser that reads no knobs is not told
            if tell is not None:
                tell(pushed)
            return diagnoser.diagnose(
                history, self.run_id, step - offset, task_group=self.task_group, model_size=self.model_size
            )

        ok, diagnosis = self.guard("diagnose", read)
        if ok and diagnosis is not None:
            self.journal.counts["diagnoses"] += 1
            self.journal.record("diagnosis", step, diagnosis)
            top = diagnosis.top
            self.journal.note(
                step,
                "diagnosis",
                diagnosis.summary or (f"{top.fault_type} (p={top.probability:.2f})" if top else "unknown"),
            )
        return diagnosis if ok else None

    def rewind(self, effective: int, learning_rate: object = None) -> None:
        """After a rollback to effective step ``effective``: the steps after it never happened. ``learning_rate``:
        the learning-rate knob the checkpoint restored (a change the loop makes next is measured from it)."""
        kept = [h for h in self.history if h["step"] <= effective]
        self.history.clear()
        self.history.extend(kept)
        # the checkpoint's optimiser carries the loop's learning-rate changes made before it, and no later one
        self.lr_scale = kept[-1].get(LOOP_LR_SCALE, 1.0) if kept else 1.0
        restored = isinstance(learning_rate, (int, float)) and learning_rate > 0
        self.lr_restored = float(learning_rate) if restored else None
