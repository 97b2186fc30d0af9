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
    """(residuals of the judged groups, groups zeroed, groups spread, members flipped, members counted) of one step:
    ``index`` (n,) each record's group 0..``groups``-1; a member without a finite reward and advantage leaves its
    group unjudged. Over the judged groups, a member is counted where its reward's deviation from the group mean
    exceeds the spread tolerance, and flipped where its advantage has the other sign
    (:mod:`rftfm.fm.advantage_signs`)."""
    size = np.zeros(groups)
    scored = np.zeros(groups)
    total = np.zeros(groups)
    r_max = np.zeros(groups)
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
        r_max[g] = max(r_max[g], abs(r[i]))
    sad, sdd, saa = np.zeros(groups), np.zeros(groups), np.zeros(groups)
    d_max, a_max = np.zeros(groups), np.zeros(groups)
    flips, counts = np.zeros(groups), np.zeros(groups)
    for i in range(n):
        g = index[i]
        d = r[i] - total[g] / max(size[g], 1.0)
        sad[g] += a[i] * d
        sdd[g] += d * d
        saa[g] += a[i] * a[i]
        d_max[g] = max(d_max[g], abs(d))
        a_max[g] = max(a_max[g], abs(a[i]))
        if abs(d) > spread_tolerance * max(1.0, r_max[g]):
            counts[g] += 1.0
            flips[g] += 1.0 if a[i] * d < 0.0 else 0.0
    judged = np.zeros(groups, dtype=np.bool_)
    spread = zeroed = 0
    flipped = counted = 0.0
    for g in range(groups):
        complete = scored[g] == size[g] and size[g] >= 2
        if complete and d_max[g] > spread_tolerance * max(1.0, r_max[g]):
            spread += 1
            if a_max[g] <= advantage_zero:
                zeroed += 1
            else:
                judged[g] = True
                flipped += flips[g]
                counted += counts[g]
    return group_consistency(sad[judged], sdd[judged], saa[judged]), zeroed, spread, flipped, counted


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


@compiled(error_model="numpy")
def step_numbers(own, stats, spread_tolerance, advantage_zero):  # pragma: no cover  (compiled)
    """One step's trajectory numbers in one call: into ``stats`` (4, C) :func:`column_stats` of the first C rows of
    ``own`` (C + 1, n) (the numeric fields, then the rollout step), and the advantage invariants' (state, residuals,
    zeroed, spread, flipped, counted; :func:`group_residuals`): state 1 where some group is keyed, 0 where none is
    (no group id, or none with a step), -1 where the group keys are not small whole numbers (the caller indexes them
    with ``np.unique``).

    Groups are keyed per rollout step and indexed as :func:`rftfm.fm.features.groups_per_rollout_step` and
    ``_group_index`` do (the same float operations in the same order)."""
    rows, n = own.shape
    column_stats(own[: rows - 1], stats)
    step, group, reward, advantage = own[rows - 1], own[0], own[1], own[3]
    empty = np.empty(0)
    low, high, known = np.inf, -np.inf, 0
    for i in range(n):
        if math.isfinite(group[i]):
            known += 1
            low, high = min(low, group[i]), max(high, group[i])
    if known == 0:
        return 0, empty, 0, 0, 0.0, 0.0
    width = high - low + 1
    key = np.empty(n)
    keep = np.zeros(n, dtype=np.bool_)
    kept, key_low, key_high = 0, np.inf, -np.inf
    for i in range(n):
        key[i] = step[i] * width + (group[i] - low) if math.isfinite(group[i]) else np.nan
        if math.isfinite(key[i]):
            keep[i] = True
            kept += 1
            key_low, key_high = min(key_low, key[i]), max(key_high, key[i])
    if kept == 0:
        return 0, empty, 0, 0, 0.0, 0.0
    if not key_high - key_low <= 4 * kept:
        return -1, empty, 0, 0, 0.0, 0.0
    index = np.empty(kept, dtype=np.intp)
    r, a = np.empty(kept), np.empty(kept)
    j = 0
    for i in range(n):
        if keep[i]:
            offset = key[i] - key_low
            index[j] = np.intp(offset)
            if index[j] != offset:
                return -1, empty, 0, 0, 0.0, 0.0
            r[j], a[j] = reward[i], advantage[i]
            j += 1
    groups = 0
    for j in range(kept):
        groups = max(groups, index[j] + 1)
    residual, zeroed, spread, flipped, counted = group_residuals(index, groups, r, a, spread_tolerance, advantage_zero)
    return 1, residual, zeroed, spread, flipped, counted
