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
def surprise_one(row, columns, low, high, scale, top: int) -> float:  # pragma: no cover  (compiled)
    """Mean of the ``top`` largest |innovations| of one record's features ``row`` at ``columns`` (missing: 0), each
    clipped to (``low``, ``high``) and divided by its ``scale``; summed smallest first, as numpy adds the sorted
    tail."""
    z = np.empty(columns.size)
    for i in range(columns.size):
        v = row[columns[i]]
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
