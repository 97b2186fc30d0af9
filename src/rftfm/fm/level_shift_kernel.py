"""The level-shift channel's per-record update, compiled (numba): :meth:`rftfm.fm.level_shift.LevelState.advance`
in one loop over the signals instead of a few dozen numpy calls on a (signals x 24) window (about 40 us a record).

Sums are numpy's (:func:`pairwise_sum`: the rounding of ``np.add.reduce`` over a contiguous row), so the statistics
are bit for bit those of the numpy form it replaced (tests/test_level_shift_kernel.py keeps that form as the
oracle). Written by hand: numba compiles it; see :mod:`rftfm.fm.level_shift` for the channel.
"""

from __future__ import annotations

import math

import numpy as np

from rftfm.fm.compiled import compiled
from rftfm.fm.dynamics_kernel import np_maximum, np_minimum


@compiled(inline="always")
def pairwise_sum(a) -> float:  # pragma: no cover  (compiled)
    """``np.add.reduce`` of a contiguous row of at most 128 values, with its rounding: numpy sums fewer than 8 in
    order, more in 8 interleaved partial sums added as a tree, the rest in order."""
    n = a.size
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    i = 8
    while i < n - n % 8:
        r0, r1, r2, r3 = r0 + a[i], r1 + a[i + 1], r2 + a[i + 2], r3 + a[i + 3]
        r4, r5, r6, r7 = r4 + a[i + 4], r5 + a[i + 5], r6 + a[i + 6], r7 + a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[i]
        i += 1
    return res


@compiled(inline="always")
def _mean_spread(reference, full: bool, baseline: int) -> tuple[float, float]:
    """Mean and standard deviation of a row of the reference; ``full``: no value missing (else NaN left out)."""
    if full:
        mean = pairwise_sum(reference) / baseline
        centred = reference - mean
        return mean, math.sqrt(pairwise_sum(centred * centred) / baseline)
    known = 0
    filled = np.empty(reference.size)
    for i in range(reference.size):
        known += 1 if math.isfinite(reference[i]) else 0
        filled[i] = 0.0 if reference[i] != reference[i] else reference[i]
    n = max(known, 1)
    mean = pairwise_sum(filled) / n
    for i in range(reference.size):
        c = reference[i] - mean
        filled[i] = 0.0 if c != c else c * c
    return mean, math.sqrt(pairwise_sum(filled) / n)


@compiled(error_model="numpy")
def advance(values, count, quantum, last, x, log_floors, window: int, baseline: int, min_baseline: int, result):
    """Take in one record's transformed values ``x`` (S,), updating ``values`` (S, window + baseline), ``count``,
    ``quantum`` and ``last`` in place; whether any signal is judged. ``result`` (3, S) receives the statistic (NaN:
    not judged), the window's mean and the reference's (handed in: boxing new arrays costs more than the rest)."""
    signals, width = values.shape
    present = np.empty(signals, dtype=np.bool_)
    for s in range(signals):
        present[s] = math.isfinite(x[s])
    stat, now, mean = result[0], result[1], result[2]
    stat[:] = np.nan
    if not present.any():
        return False
    floor = np.empty(signals)
    every = True  # no gathering: every row shifts (a signal never logged stays NaN)
    for s in range(signals):
        step = abs(x[s] - last[s])
        quantum[s] = np_minimum(quantum[s], step if step > 0 else np.inf)  # a repeated or missing value is no step
        floor[s] = np_maximum(log_floors[s], quantum[s])
        if present[s]:
            last[s] = x[s]
        every = every and (present[s] or count[s] == 0)
    judged, full = False, True
    for s in range(signals):
        if every or present[s]:
            values[s, : width - 1] = values[s, 1:].copy()
            values[s, width - 1] = x[s]
        count[s] += 1 if present[s] else 0
        judged = judged or (present[s] and count[s] >= window + min_baseline)
        full = full and (count[s] == 0 or count[s] >= window + baseline)
    if not judged:
        return False
    for s in range(signals):
        mean[s], spread = _mean_spread(values[s, : width - window], full, baseline)
        now[s] = pairwise_sum(values[s, width - window :]) / window
        if present[s] and count[s] >= window + min_baseline:
            stat[s] = (now[s] - mean[s]) / np_maximum(spread, floor[s])
    return True


@compiled(error_model="numpy")
def units_one(stat, limits) -> float:  # pragma: no cover  (compiled)
    """:func:`rftfm.fm.level_shift.units` of one record's statistics (S,): the largest in units of its limit in the
    direction it moved (``limits`` (S, 2): up, down); NaN where nothing is judged."""
    best = np.nan
    for k in range(stat.size):
        v = stat[k] / limits[k, 0] if stat[k] >= 0 else -stat[k] / limits[k, 1]
        best = best if (best >= v or v != v) else v  # np.fmax: NaN only where all are
    return best
