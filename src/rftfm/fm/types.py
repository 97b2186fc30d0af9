"""Typed messages of the RFT-FM loop: what the detector, diagnoser and remediator hand on.

Detector.observe(...) -> Alarm | None
Diagnoser.diagnose(...) -> Diagnosis
Remediator.plan(...) -> list[Action]; the controller records an Outcome for each.
Every one of them is stored verbatim (as JSON) in the incident store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class SignalEvidence(BaseModel):
    """One signal that deviated from the learned normal profile."""

    signal: str
    direction: Literal["up", "down"]
    value: float | None = None  # observed value (or recent mean)
    expected: float | None = None  # normal-profile value at this step
    z: float | None = None  # standardised deviation
    ratio: float | None = None  # value / expected, where meaningful
    since_step: int | None = None  # first step of the current deviation
    non_finite: bool = False  # the signal stopped being finite (``expected``: its last finite value)
    reward_identity: bool = False  # the reward left the weighted sum of its functions' means (``expected``)
    binary_mean: float | None = None  # scores that were 0 or 1, with this mean, no longer are (:mod:`binary_reward`)
    penalty_term: str | None = None  # the loss took on ``coefficient`` x this term (:mod:`rftfm.fm.loss_penalty`)
    coefficient: float | None = None
    per_kl: bool = False  # value / expected: the loss per unit of KL now / before (:mod:`rftfm.fm.kl_coefficient`)
    configured: bool = False  # (with ``per_kl``) ``expected`` is the KL coefficient the trainer is configured with

    @property
    def measured(self) -> bool:
        """Whether ``direction`` was measured against a baseline (a run's first records have none: the signal
        is named because the detector weighed it, and its direction means nothing)."""
        return self.expected is not None or self.z is not None or self.non_finite

    def short(self) -> str:
        """``signal direction``, or ``signal value (no baseline yet)`` when the direction was not measured."""
        if self.measured:
            return f"{self.signal} {self.direction}"
        return self.signal if self.value is None else f"{self.signal} {self.value:.3g} (no baseline yet)"


class Alarm(BaseModel):
    run_id: str
    step: int
    score: float
    threshold: float
    evidence: list[SignalEvidence] = Field(default_factory=list)


class Hypothesis(BaseModel):
    family: str
    fault_type: str
    probability: float


class Diagnosis(BaseModel):
    run_id: str
    step: int
    ranked: list[Hypothesis]  # best first; empty when abstaining
    unknown: bool = False  # abstained: no known fingerprint fits
    evidence: list[SignalEvidence] = Field(default_factory=list)
    summary: str = ""  # one human sentence, e.g. "reward_hacking since step 41: ..."

    @property
    def top(self) -> Hypothesis | None:
        return None if self.unknown or not self.ranked else self.ranked[0]


class Action(BaseModel):
    kind: str  # e.g. "rollback", "set_knob", "halt"
    knob: str | None = None
    value: Any = None
    previous: Any = None
    reason: str = ""


class Outcome(BaseModel):
    action: Action
    result: Literal["kept", "escalated", "reverted", "halted", "failed"]
    detail: str = ""


class Episode(BaseModel):
    """An alarm episode: from its first alarmed step until a few steps pass without an alarm."""

    run_id: str
    start_step: int
    end_step: int  # the last alarmed step so far
    alarmed_steps: int = 1
    peak_score: float = 0.0
    open: bool = True  # not cleared yet (or still alarming when the log ended)
    evidence: list[SignalEvidence] = Field(default_factory=list)  # the strongest alarm's
    diagnosis: Diagnosis | None = None  # the first, then the latest at least as sure (monitor.replaces)
    #: once it cleared: the evidence signals that had not come back to their baseline before the episode (the
    #: run settled at a new level: the detector stops alarming at a level that persists), their values then;
    #: empty: every one came back; None: not judged (still open, or no values to judge by)
    lasting: list[SignalEvidence] | None = None
