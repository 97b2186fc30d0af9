"""A penalty term that takes over the loss mid-run: the rule of the detector's loss-penalty channel.

The loss a GRPO trainer logs is its policy term plus the penalties: TRL's ``loss`` is
``policy term + beta x KL - entropy_coef x entropy``. The policy term's advantages average to zero in every group,
so a healthy run's loss hovers around a level of its own (0, or a length-advantage covariance under a token-level
loss) and moves with it slowly. A KL coefficient pushed up, or an entropy coefficient whose sign was flipped (a
penalty where a bonus was meant), adds a positive term at every record from the push on. Measured per nat of
entropy (``loss / entropy``: dimensionless, and an entropy term is proportional to it), the smallest value of the
last :data:`WINDOW` records above the median of up to :data:`BASELINE` records before them -- and above 0: a penalty
is a positive term, and a loss that climbs back towards 0 from below (a token-level loss whose successful completions
are the longer ones sits below it) is no penalty -- in units of their spread (never below :data:`FLOOR`), is the
channel's statistic; only a rise counts.

Judged only once the run has a reference (:data:`MIN_BASELINE` records): a penalty present from the first step
looks like a token-level loss whose failing completions are the longer ones, which keeps a healthy run's loss
positive too -- that is not told apart from the loss alone. A record without a finite loss and a positive entropy
leaves the state as it was.

Written by hand: a two-window statistic of a ratio of two logged metrics, a few microseconds per record; river's
drift detectors and ruptures watch one series against thresholds of their own, not this ratio against limits
calibrated across configurations.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.types import SignalEvidence

LOSS = CUBE_SIGNALS.index("policy_loss")
ENTROPY = CUBE_SIGNALS.index("entropy")
KL = CUBE_SIGNALS.index("kl")
WINDOW = 4  # records whose smallest loss per nat is "now": a penalty raises the loss at every record
BASELINE = 20  # records before the window whose median and spread are "before"
MIN_BASELINE = 8  # fewer: no reference yet
FLOOR = 0.03  # a spread of the loss per nat of entropy is never taken below this
#: the channel's threshold is never below this: the window's every record two standard deviations above the records
#: before (for independent Gaussian noise, about 3e-7 of windows) -- a bar the calibration on healthy runs may raise
MIN_THRESHOLD = 2.0
UNJUDGED = (math.nan, math.nan, math.nan)
#: the terms a penalty can multiply (TRL: ``beta x KL``, ``- entropy_coef x entropy``) and their columns
TERMS = {"kl": KL, "entropy": ENTROPY}
#: a term took over the loss when the added loss per unit of it -- the coefficient that moved -- varies over the window
#: by at most this fraction of its mean (coefficient of variation) and by at most half the other term's
MAX_SPREAD = 0.1


@dataclass
class PenaltyState:
    """One run's last ``window`` + :data:`BASELINE` losses per nat of entropy, and the losses themselves (``window``:
    the records judged as "now", :data:`WINDOW` in the detector)."""

    window: int = WINDOW
    ratios: deque = field(default_factory=deque)
    losses: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        size = self.window + BASELINE
        self.ratios, self.losses = deque(self.ratios, maxlen=size), deque(self.losses, maxlen=size)

    def copy(self) -> "PenaltyState":
        return PenaltyState(self.window, self.ratios, self.losses)

    def advance(self, loss: float, entropy: float) -> tuple[float, float, float]:
        """Take in one record's loss and entropy; return the statistic (NaN: not judged), the window's mean loss and
        the reference's (read where the statistic is finite)."""
        if not (math.isfinite(loss) and math.isfinite(entropy) and entropy > 0.0):
            return UNJUDGED
        self.ratios.append(loss / entropy)
        self.losses.append(loss)
        n, w = len(self.ratios), self.window
        if n < w + MIN_BASELINE:
            return UNJUDGED
        ratios = list(self.ratios)
        reference, window = ratios[: n - w], ratios[n - w :]
        middle = sorted(reference)
        k = len(middle)
        median = middle[k // 2] if k % 2 else 0.5 * (middle[k // 2 - 1] + middle[k // 2])
        mean = sum(reference) / k
        spread = math.sqrt(sum((r - mean) ** 2 for r in reference) / k)
        losses = list(self.losses)
        now_loss = sum(losses[n - w :]) / w
        before_loss = sum(losses[: n - w]) / (n - w)
        return (min(window) - max(median, 0.0)) / max(spread, FLOOR), now_loss, before_loss


def cube_stats(raw: np.ndarray, steps: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """(R, S) every record's statistic of a raw cube (R, S, len(CUBE_SIGNALS)) in step order (``steps`` 0: absent),
    exactly as :meth:`PenaltyState.advance` with ``window`` gives it."""
    out = np.full(steps.shape, np.nan)
    for r in range(steps.shape[0]):
        state = PenaltyState(window)
        for s in np.flatnonzero(steps[r] > 0):
            out[r, s] = state.advance(float(raw[r, s, LOSS]), float(raw[r, s, ENTROPY]))[0]
    return out


def _window(raw: np.ndarray, steps: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray] | None:
    """One run's last ``window`` records with a loss and their loss above its median over up to :data:`BASELINE`
    records before them (None: fewer than :data:`MIN_BASELINE` of those)."""
    rows = np.flatnonzero((steps > 0) & np.isfinite(raw[:, LOSS]))[-(window + BASELINE) :]
    if rows.size < window + MIN_BASELINE:
        return None
    return rows[-window:], raw[rows[-window:], LOSS] - float(np.median(raw[rows[:-window], LOSS]))


def penalty_term(raw: np.ndarray, steps: np.ndarray, window: int = WINDOW) -> tuple[str | None, float]:
    """Which term a penalty added to one run's loss multiplies, and by how much (``raw`` (S, len(CUBE_SIGNALS)),
    ``steps`` (S,)): over the last ``window`` records with a loss, the loss above its median over up to
    :data:`BASELINE` records before them, divided by each term's value record by record, is the coefficient the
    penalty added -- constant for the term that took over the loss (an entropy coefficient flipped to -3 adds exactly
    3 x entropy at every record while the entropy falls; a KL coefficient pushed to 5 adds 5 x KL while the KL moves),
    not for the other. ``(None, nan)`` where no term's is constant (:data:`MAX_SPREAD`), or the window has no
    reference yet."""
    recent = _window(raw, steps, window)
    if recent is None:
        return None, math.nan
    rows, added = recent
    spread = {}
    for term, column in TERMS.items():
        values = raw[rows, column]
        if np.all(values > 0.0):  # (NaN compares False)
            coefficient = added / values
            mean = float(coefficient.mean())
            if mean > 0.0:
                spread[term] = (float(coefficient.std()) / mean, mean)
    for term, (cv, mean) in spread.items():
        others = [other for name, (other, _) in spread.items() if name != term]
        if cv <= MAX_SPREAD and all(cv <= 0.5 * other for other in others):
            return term, mean
    return None, math.nan


def term_evidence(raw: np.ndarray, steps: np.ndarray, window: int = WINDOW) -> SignalEvidence | None:
    """The loss's rise as the penalty :func:`penalty_term` names (None: it names none): the window's mean loss
    against the reference's median, since the window's first step, with the term and the coefficient it added."""
    term, coefficient = penalty_term(raw, steps, window)
    recent = _window(raw, steps, window)
    if term is None or recent is None:
        return None
    rows, added = recent
    now = float(raw[rows, LOSS].mean())
    before = now - float(added.mean())
    return SignalEvidence(
        signal="policy_loss",
        direction="up",
        value=now,
        expected=before,
        since_step=int(steps[rows[0]]),
        penalty_term=term,
        coefficient=coefficient,
    )


def describe_term(e: SignalEvidence) -> str:
    """A penalty in words: ``policy loss 2.1 vs 0.004 before step 17: 3 x entropy added at every record since (the
    entropy coefficient moved by -3: a penalty where a bonus was meant)``."""
    c = e.coefficient if e.coefficient is not None else math.nan
    head = f"policy loss {e.value:.3g} vs {e.expected:.3g} before step {e.since_step}"
    if e.penalty_term == "entropy":
        return (f"{head}: {c:.2g} x entropy added at every record since "
                f"(the entropy coefficient moved by {-c:.2g}: a penalty where a bonus was meant)")
    return f"{head}: {c:.2g} x KL added at every record since (the KL coefficient raised by {c:.2g})"


def evidence(stat: float, now: float, before: float, since_step: int | None) -> SignalEvidence:
    """The loss's rise as evidence: its mean over the window against its mean before."""
    return SignalEvidence(
        signal="policy_loss",
        direction="up",
        value=now,
        expected=before,
        z=stat,
        ratio=now / before if abs(before) > 1e-12 else None,
        since_step=since_step,
    )
