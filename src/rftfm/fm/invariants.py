"""When a run's advantage invariants count as broken: the rule the detector's invariant channel and the diagnoser share.

The invariants (:func:`rftfm.fm.features.advantage_consistency`) are 0 in a healthy run of a group-relative
estimator up to float rounding. A record breaks one when its value exceeds :data:`INVARIANT_LIMITS`, far above
float rounding (1 - corr^2 of advantages rounded to bf16 reaches 3e-6 in the tests; healthy benchmark records stay
below 1e-12) and below what an advantage bug gives (a flipped group: 1; one zeroed group among 64: 0.016). It is
trusted only once the run's own records held it :data:`INVARIANT_WARMUP` times: an estimator that does not make it
hold (PPO's GAE, REINFORCE++'s batch baseline) never arms it, and a run that breaks it from its first step is left
to the other evidence -- unless the caller knows the estimator (``known``: a TRL GRPOTrainer whose configuration
the callback checked), which arms it from the first record. Written by hand: a rule over two numbers, no library
does it.
"""

from __future__ import annotations

import numpy as np

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.features import INVARIANT_FEATURES
from rftfm.fm.live_kernels import invariants_one

INVARIANT_LIMITS: dict[str, float] = dict.fromkeys(INVARIANT_FEATURES, 1e-3)
INVARIANT_WARMUP = 3
COLUMNS = [CUBE_SIGNALS.index(s) for s in INVARIANT_LIMITS]
_LIMITS = np.array(list(INVARIANT_LIMITS.values()))
_COLUMNS = np.array(COLUMNS)


def holds(values: np.ndarray) -> np.ndarray:
    """Which invariants a record's values (last axis: :data:`INVARIANT_LIMITS`) were judged and held."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values <= _LIMITS)


def units(values: np.ndarray, held_before: np.ndarray) -> np.ndarray:
    """Each invariant in units of its limit where the run had held it :data:`INVARIANT_WARMUP` times (else 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(held_before >= INVARIANT_WARMUP, values / _LIMITS, 0.0)
    return np.where(np.isfinite(out), out, 0.0)


def advance_one(record: np.ndarray, held: np.ndarray) -> np.ndarray:
    """:func:`units` of one cube record (len(CUBE_SIGNALS),) given the records ``held`` before it, and ``held``
    updated in place with :func:`holds` (compiled: the two numpy forms cost ~20 us a record)."""
    units = np.empty(len(COLUMNS))
    invariants_one(record[_COLUMNS], _LIMITS, held, INVARIANT_WARMUP, units)
    return units


def armed_units(raw: np.ndarray, steps: np.ndarray, known: bool = False) -> np.ndarray:
    """(..., S, len(INVARIANT_LIMITS)) :func:`units` of raw cube records (..., S, len(CUBE_SIGNALS)), each run's
    records in order (``steps`` 0: absent); ``known``: armed from the first record."""
    values = np.where(steps[..., None] > 0, raw[..., COLUMNS], np.nan)
    held = holds(values)
    return units(values, np.cumsum(held, axis=-2) - held + (INVARIANT_WARMUP if known else 0))


def broken(raw: np.ndarray, steps: np.ndarray, known: bool = False) -> list[str]:
    """The invariants one run's last present record breaks, armed (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,))."""
    present = np.flatnonzero(steps > 0)
    if not present.size:
        return []
    last = armed_units(raw, steps, known)[present[-1]]
    return [s for s, u in zip(INVARIANT_LIMITS, last) if u > 1.0]
