"""A number the policy's own forward and backward pass produces stops being finite: the rule of the detector's
non-finite channel.

A loss, a gradient norm, a KL or an entropy is computed through the policy's weights; once those overflow (float16
weights without loss scaling, a learning rate far too high), it is NaN or infinite, and every framework's log says
so at the next logged step (TRL writes ``"grad_norm": NaN``). The record still has its reward (a verifier scores
whatever the broken policy samples), so the run goes on logging while its optimisation numbers are gone. Parsers
and the benchmark layout keep a non-finite value as missing (:mod:`rftfm.io.fields` counts it), so the rule reads
what reaches the detector: a signal the run logged finite at :data:`WARMUP` records or more that is missing from
:data:`PERSIST` training records in a row -- records with a reward -- while it stays missing (one missing value is no
evidence: an fp16 loss scaler that skips a step on overflow logs one infinite grad norm in a healthy run). A run
that never logs a signal (no KL term, an old TRL without the entropy) never arms it. No healthy or other faulty run
of the benchmark's 600 does this; 9 of its 13 numerical blow-ups do (docs/detection.md). Written by hand: a count
per signal; no library watches for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.live_kernels import lost_advance
from rftfm.fm.types import SignalEvidence
from rftfm.signals import SIGNALS as REGISTRY
from rftfm.signals import label

#: The registry's step metrics computed through the policy's weights.
SIGNALS: tuple[str, ...] = tuple(s for s in CUBE_SIGNALS if s in REGISTRY and REGISTRY[s].forward_pass)
COLUMNS = np.array([CUBE_SIGNALS.index(s) for s in SIGNALS])
# a record's values of them: a slice where the columns are contiguous (a view, read at every live record)
_TAKE = slice(int(COLUMNS[0]), int(COLUMNS[-1]) + 1) if bool(np.all(np.diff(COLUMNS) == 1)) else COLUMNS
ANCHOR = CUBE_SIGNALS.index("reward_mean")  # a record with a reward is a training record
WARMUP = 3  # finite values of a signal before its absence means anything
# training records in a row a signal must be missing from: an fp16 loss scaler's skipped step logs one inf grad norm
# and the run goes on (a healthy run); a blow-up's numbers stay gone
PERSIST = 2
UNITS = 10.0  # a lost signal's score in units of an alarm (far above 1: nothing healthy does it)
# A signal missing from the alarm's own record, logged finite once before: what the diagnoser weighs as a sign of a
# blow-up, not as proof (one record is what an fp16 loss scaler's skipped step logs). A blow-up from step 1, or one
# the detector caught at its first NaN, had been diagnosed from its truncated lengths or its LR. No healthy record of
# the 1,200-run benchmark loses one.
SIGN_WARMUP = 1
SIGN_PERSIST = 1
_NONE_LOST = np.zeros(len(SIGNALS), dtype=bool)
_NONE_LOST.flags.writeable = False


@dataclass
class LostState:
    """One run's count of finite values of each signal, the last one, how many training records in a row each has
    been missing from since it was armed, and the step of the first of them (0: not missing)."""

    finite: np.ndarray = field(default_factory=lambda: np.zeros(len(SIGNALS), dtype=int))
    last: np.ndarray = field(default_factory=lambda: np.full(len(SIGNALS), np.nan))
    missing: np.ndarray = field(default_factory=lambda: np.zeros(len(SIGNALS), dtype=int))
    since: np.ndarray = field(default_factory=lambda: np.zeros(len(SIGNALS), dtype=int))

    def copy(self) -> "LostState":
        return LostState(self.finite.copy(), self.last.copy(), self.missing.copy(), self.since.copy())

    def advance(self, raw: np.ndarray, step: int) -> np.ndarray:
        """Take in one record (its len(CUBE_SIGNALS) values) at ``step``; which signals it has lost (bool,
        len(SIGNALS); read-only)."""
        lost = lost_advance(
            self.finite, self.last, self.missing, self.since, raw[_TAKE], float(raw[ANCHOR]), step, WARMUP, PERSIST
        )  # compiled: a dozen numpy calls on a few values cost more than their arithmetic
        return self.missing >= PERSIST if lost else _NONE_LOST

    def evidence(self, lost: np.ndarray) -> list[SignalEvidence]:
        """The signals of a record's ``lost`` (from :meth:`advance`) as evidence."""
        return [evidence(SIGNALS[k], float(self.last[k]), int(self.since[k]) or None) for k in np.flatnonzero(lost)]


def units(lost: np.ndarray) -> np.ndarray:
    """(...,) the channel's score from lost signals (..., len(SIGNALS)): :data:`UNITS` where any is lost, else 0."""
    return np.where(lost.any(axis=-1), UNITS, 0.0)


def cube_lost(raw: np.ndarray, steps: np.ndarray, warmup: int = WARMUP, persist: int = PERSIST) -> np.ndarray:
    """(R, S, len(SIGNALS)) which signals each record of a raw cube (R, S, len(CUBE_SIGNALS)) in step order has lost
    (``steps`` 0: absent), exactly as :meth:`LostState.advance` gives them (with its ``warmup`` and ``persist``)."""
    values = np.where(steps[..., None] > 0, raw[..., COLUMNS], np.nan)
    training = (steps > 0) & np.isfinite(raw[..., ANCHOR])
    out = np.zeros(values.shape, dtype=bool)
    finite = np.zeros((steps.shape[0], len(SIGNALS)), dtype=int)
    missing = np.zeros_like(finite)
    for s in range(steps.shape[1]):
        present = np.isfinite(values[:, s])
        absent = (finite >= warmup) & ~present & training[:, s, None]
        finite += present
        missing = np.where(present, 0, missing + absent)
        out[:, s] = (missing >= persist) & training[:, s, None]
    return out


def lost_now(raw: np.ndarray, steps: np.ndarray, warmup: int = WARMUP, persist: int = PERSIST) -> list[str]:
    """The signals one run's last present record has lost (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)), by the
    detector's rule unless ``warmup`` and ``persist`` say otherwise (:func:`missing_now`)."""
    present = np.flatnonzero(steps > 0)
    if not present.size:
        return []
    last = cube_lost(raw[None], steps[None], warmup, persist)[0, present[-1]]
    return [s for s, gone in zip(SIGNALS, last) if gone]


def evidence(signal: str, last_value: float | None, since_step: int | None) -> SignalEvidence:
    """A lost signal as evidence: not finite since ``since_step``, its last finite value before."""
    return SignalEvidence(signal=signal, direction="up", value=None, expected=last_value, non_finite=True,
                          since_step=since_step)


def describe(e: SignalEvidence) -> str:
    """A lost signal in words: ``grad norm not finite (last 2.3) since step 130``."""
    text = f"{label(e.signal)} not finite" + (f" (last {e.expected:.3g})" if e.expected is not None else "")
    return text + (f" since step {e.since_step}" if e.since_step is not None else "")


def missing_now(raw: np.ndarray, steps: np.ndarray) -> list[str]:
    """The signals merely missing from one run's last present record, logged finite once before (a sign, not proof:
    :data:`SIGN_WARMUP`, :data:`SIGN_PERSIST`); the ones :func:`lost_now` names are among them."""
    return lost_now(raw, steps, SIGN_WARMUP, SIGN_PERSIST)


def run_evidence(raw: np.ndarray, steps: np.ndarray, lost: list[str]) -> list[SignalEvidence]:
    """Each of ``lost`` as evidence from one run's records (S, len(CUBE_SIGNALS)): its last finite value and the
    step of the first record since which it has been missing."""
    items = []
    for name in lost:
        values = np.where(steps > 0, raw[:, CUBE_SIGNALS.index(name)], np.nan)
        finite = np.flatnonzero(np.isfinite(values))
        after = [i for i in np.flatnonzero(steps > 0) if i > finite[-1]] if finite.size else []
        items.append(evidence(name, float(values[finite[-1]]) if finite.size else None,
                              int(steps[after[0]]) if after else None))
    return items
