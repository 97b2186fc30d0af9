"""Two small per-record paths of the live detector, compiled (numba): the surprise channel's score of one record and
the non-finite channel's update. Each is a handful of numpy calls on a few dozen values, where numpy's per-call
set-up costs more than the arithmetic; written as loops they give the same numbers (tests/test_live_kernels.py
checks them against the numpy forms the offline paths keep). Written by hand: numba compiles them; see
:meth:`rftfm.fm.detect.Detector._surprise` and :class:`rftfm.fm.non_finite.LostState` for what they judge.
"""

from __future__ import annotations

import math

import numpy as np

from rftfm.fm.compiled import compiled
from rftfm.fm.dynamics_kernel import np_maximum, np_minimum


@compiled(error_model="numpy")
def surprise_one(row, columns, gates, low, high, scale, top: int) -> float:  # pragma: no cover  (compiled)
    """Mean of the ``top`` largest |innovations| of one record's features ``row`` at ``columns`` (missing, or where
    the feature at ``gates`` is NaN -- a gate of -1: none --: 0), each clipped to (``low``, ``high``) and divided by
    its ``scale``; summed smallest first, as numpy adds the sorted tail."""
    z = np.empty(columns.size)
    for i in range(columns.size):
        v = row[columns[i]]
        if gates[i] >= 0 and row[gates[i]] != row[gates[i]]:
            v = np.nan
        z[i] = abs(np_minimum(np_maximum(0.0 if v != v else v, low[i]), high[i])) / scale[i]
    z.sort()
    total = 0.0
    for i in range(max(z.size - top, 0), z.size):
        total += z[i]
    return total / min(top, z.size)


@compiled()
def lost_advance(finite, last, missing, since, values, anchor, step, warmup, persist):  # pragma: no cover
    """:meth:`rftfm.fm.non_finite.LostState.advance` on its arrays (updated in place): whether a signal is lost
    now; ``missing`` then says which (``>= persist``). (Compiled: coverage cannot see inside.)"""
    any_missing = False
    for k in range(values.size):
        any_missing = any_missing or missing[k] != 0
    absent_any = False
    for k in range(values.size):
        present = math.isfinite(values[k])
        absent = finite[k] >= warmup and not present
        absent_any = absent_any or absent
        if present:
            finite[k] += 1
            last[k] = values[k]
            if any_missing:
                missing[k], since[k] = 0, 0
    if not absent_any or not math.isfinite(anchor):
        return False
    lost = False
    for k in range(values.size):
        if finite[k] >= warmup and not math.isfinite(values[k]):  # (finite counts only present values: unchanged)
            if missing[k] == 0:
                since[k] = step
            missing[k] += 1
        lost = lost or missing[k] >= persist
    return lost


@compiled(error_model="numpy")
def cube_row(features, traj_mean: int, traj_std: int, reward: int, eval_index: int, out) -> None:  # pragma: no cover
    """:func:`rftfm.fm.cube.with_derived` of one record: into ``out`` (len(CUBE_SIGNALS),) its ``features``
    (len(FEATURES),; non-finite as NaN) and the derived signals (the stall signal left NaN)."""
    n = features.size
    for i in range(n):
        v = features[i]
        out[i] = v if math.isfinite(v) else np.nan
    m = out[traj_mean]
    out[n] = out[reward] - out[eval_index]
    out[n + 1] = out[traj_std] ** 2 - m * (1.0 - m)
    out[n + 2] = np.nan


@compiled(error_model="numpy")
def invariants_one(values, limits, held, warmup: int, units) -> None:  # pragma: no cover  (compiled)
    """:func:`rftfm.fm.invariants.units` of one record's invariant ``values`` into ``units`` (0 where the run had
    not held the invariant ``warmup`` times, or where not finite), then :func:`~rftfm.fm.invariants.holds` added
    to ``held`` (in place)."""
    for k in range(values.size):
        u = values[k] / limits[k] if held[k] >= warmup else 0.0
        units[k] = u if math.isfinite(u) else 0.0
        held[k] += 1.0 if math.isfinite(values[k]) and values[k] <= limits[k] else 0.0


@compiled(error_model="numpy")
def flat_advance(previous, streak, accuracy, out) -> None:  # pragma: no cover  (compiled)
    """:meth:`rftfm.fm.cube.FlatStreak.advance` on its arrays (updated in place): into ``out`` each run's streak of
    unchanged eval accuracy (NaN where this record has none)."""
    for r in range(accuracy.size):
        if not math.isfinite(accuracy[r]):
            out[r] = np.nan
            continue
        streak[r] = streak[r] + 1.0 if abs(accuracy[r] - previous[r]) < 1e-9 else 0.0
        previous[r] = accuracy[r]
        out[r] = streak[r]
