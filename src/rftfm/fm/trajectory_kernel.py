"""One step's trajectory numbers, compiled (numba): the per-group sums of the advantage invariants and the columns'
means and sds, in one pass each instead of a dozen numpy calls on a step's hundred-odd values.

Used by :func:`rftfm.fm.features.advantage_consistency` and :func:`rftfm.fm.features.trajectory_aggregates` on the
live path (the offline path, :func:`rftfm.fm.features.features_frame`, aggregates with polars). Sums run in record
order, as ``np.bincount`` adds its weights, so the invariants are those of the numpy form they replaced.

Written by hand: numba compiles it; the invariant is specific to GRPO-style estimators (see
:func:`~rftfm.fm.features.advantage_consistency`). Compiled on first use and cached next to the module.
"""

from __future__ import annotations

import math

import numpy as np

from rftfm.fm.compiled import compiled


@compiled(error_model="numpy")
def group_consistency(sad, sdd, saa):  # pragma: no cover  (compiled)
    """Per group, the share of its advantages' energy that no positive multiple of the reward deviations explains
    (1 - corr^2 when they agree in sign, 1 when they disagree), from the sums of a*d, d*d and a*a; in [0, 1]
    (NaN where undefined; float division as numpy's, the error model)."""
    out = np.empty(sad.size)
    for g in range(sad.size):
        c = sad[g] / sdd[g]
        c = c if (c >= 0.0 or c != c) else 0.0  # np.maximum(c, 0)
        residual = (saa[g] - 2 * c * sad[g] + c * c * sdd[g]) / saa[g]
        out[g] = residual if residual != residual else min(max(residual, 0.0), 1.0)
    return out


@compiled(error_model="numpy")
def group_residuals(index, groups, reward, advantage, spread_tolerance, advantage_zero):  # pragma: no cover
    """(residuals of the judged groups, groups zeroed, groups spread) of one step: ``index`` (n,) each record's
    group 0..``groups``-1; a member without a finite reward and advantage leaves its group unjudged."""
    size = np.zeros(groups)
    scored = np.zeros(groups)
    total = np.zeros(groups)
    n = index.size
    r = np.empty(n)
    a = np.empty(n)
    for i in range(n):
        g = index[i]
        ok = math.isfinite(reward[i]) and math.isfinite(advantage[i])
        r[i] = reward[i] if ok else 0.0
        a[i] = advantage[i] if ok else 0.0
        size[g] += 1.0
        scored[g] += 1.0 if ok else 0.0
        total[g] += r[i]
    sad, sdd, saa = np.zeros(groups), np.zeros(groups), np.zeros(groups)
    d_max, r_max, a_max = np.zeros(groups), np.zeros(groups), np.zeros(groups)
    for i in range(n):
        g = index[i]
        d = r[i] - total[g] / max(size[g], 1.0)
        sad[g] += a[i] * d
        sdd[g] += d * d
        saa[g] += a[i] * a[i]
        d_max[g] = max(d_max[g], abs(d))
        r_max[g] = max(r_max[g], abs(r[i]))
        a_max[g] = max(a_max[g], abs(a[i]))
    judged = np.zeros(groups, dtype=np.bool_)
    spread = zeroed = 0
    for g in range(groups):
        complete = scored[g] == size[g] and size[g] >= 2
        if complete and d_max[g] > spread_tolerance * max(1.0, r_max[g]):
            spread += 1
            if a_max[g] <= advantage_zero:
                zeroed += 1
            else:
                judged[g] = True
    return group_consistency(sad[judged], sdd[judged], saa[judged]), zeroed, spread


@compiled(error_model="numpy")
def column_stats(columns, result) -> None:  # pragma: no cover  (compiled)
    """Into ``result`` (4, C): the count, mean, sd and largest |value| of each row of ``columns`` (C, n) over its
    finite values (NaN where none; handed in: boxing new arrays costs more than the arithmetic)."""
    rows, n = columns.shape
    count, mean, sd, largest = result[0], result[1], result[2], result[3]
    count[:] = 0.0
    mean[:], sd[:], largest[:] = np.nan, np.nan, np.nan
    for c in range(rows):
        k, total, top = 0, 0.0, 0.0
        for i in range(n):
            v = columns[c, i]
            if math.isfinite(v):
                k += 1
                total += v
                top = max(top, abs(v))
        if k == 0:
            continue
        m = total / k
        spread = 0.0
        for i in range(n):
            v = columns[c, i]
            if math.isfinite(v):
                spread += (v - m) * (v - m)
        count[c], mean[c], sd[c], largest[c] = k, m, math.sqrt(spread / k), top
