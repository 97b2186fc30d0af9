"""The tracker's per-record update, compiled (numba): one loop over runs x signals instead of a hundred numpy calls.

:class:`~rftfm.fm.dynamics.DynamicsTracker` follows a live run one record at a time, where each numpy call on a
record's few dozen values costs more in dispatch than in arithmetic (about 170 us per record, a fifth of the
detector's ``observe``); the evaluation follows hundreds of runs at once through the same update. This kernel is
that update, written once as a loop and compiled: the same operations in the same order as the vectorised form
it replaced (every elementwise NaN rule of ``np.maximum`` / ``np.fmax`` / ``np.where`` spelled out below, float
division as numpy's), so the features are bit for bit those of before: tests/test_dynamics_kernel.py keeps that form
as the oracle.

Written by hand: numba compiles it; no library has this update (see :mod:`rftfm.fm.dynamics`). Compiled on first
use and cached next to the module (``cache=True``), so only a machine's first process pays the compilation.
"""

from __future__ import annotations

import math

import numpy as np

from rftfm.fm.compiled import compiled

MAD_TO_SD_MEAN = 1.2533  # mean absolute deviation -> standard deviation (Gaussian)


@compiled(inline="always")
def np_maximum(a: float, b: float) -> float:
    """``np.maximum``: NaN if either is NaN."""
    return a if (a >= b or a != a) else b


@compiled(inline="always")
def np_minimum(a: float, b: float) -> float:
    """``np.minimum``: NaN if either is NaN."""
    return a if (a <= b or a != a) else b


@compiled(inline="always")
def np_fmax(a: float, b: float) -> float:
    """``np.fmax``: the other value where one is NaN."""
    return a if (a >= b or b != b) else b


@compiled(inline="always")
def np_fmin(a: float, b: float) -> float:
    """``np.fmin``: the other value where one is NaN."""
    return a if (a <= b or b != b) else b


@compiled(inline="always")
def _sign(a: float) -> float:
    return 1.0 if a > 0 else (-1.0 if a < 0 else a)  # (0 stays 0; NaN stays NaN)


@compiled(inline="always")
def _comparable(xv: float, magnitude: float, is_log: bool, magnitude_fraction: float) -> tuple[float, float]:
    """(value on the comparable scale, the signal's c): asinh(x / c) for a log signal, c set at its first non-zero
    value; an exact 0 of a magnitude is left out (NaN)."""
    if not is_log:
        return xv, magnitude
    if magnitude != magnitude and math.isfinite(xv) and abs(xv) > 0:
        magnitude = magnitude_fraction * abs(xv)
    return (math.asinh(xv / magnitude) if (math.isfinite(magnitude) and xv != 0) else np.nan), magnitude


@compiled(inline="always")
def _noise_scale(
    count: float, total: float, noise: float, resolution: float, has_prior: bool, prior: float, prior_floor: float,
    floor: float, prior_weight: float, all_time_floor: float,
) -> float:
    """The noise scale in use: the run's own estimate shrunk towards the prior; without a prior (the user's units)
    unknown until the signal has moved, and never below its resolution (NaN: unknown)."""
    all_time = total / max(count, 1.0) if count > 0 else np.nan
    own = np_fmax(noise, all_time_floor * all_time)
    if has_prior:
        own0 = 0.0 if own != own else own
        scale = math.sqrt((prior_weight * (prior * prior) + count * (own0 * own0)) / (prior_weight + count))
        return np_maximum(scale, prior_floor)
    scale = own if (count >= 3 and math.isfinite(resolution)) else np.nan
    return np_maximum(scale, np_fmax(floor, resolution))


@compiled(inline="always")
def _learn_noise(
    e: float, sigma: float, noise: float, total: float, count: float, learn: bool, huber: float, gamma: float
) -> tuple[float, float, float]:
    """(noise, its all-time sum, count) after an inlier innovation ``e`` (mean absolute innovation, each clipped
    at ``huber`` noise units); unchanged where it does not ``learn``."""
    a = abs(e) * MAD_TO_SD_MEAN
    if math.isfinite(sigma):
        a = np_minimum(a, huber * MAD_TO_SD_MEAN * sigma)
    if not learn:
        return noise, total + 0.0, count
    return ((1 - gamma) * noise + gamma * a if math.isfinite(noise) else a), total + (0.0 if a != a else a), count + 1


@compiled(inline="always")
def _cusum(cplus: float, cminus: float, zz: float, judged: bool, k: float, cap: float) -> tuple[float, float]:
    """The two-sided CUSUM after innovation ``zz`` (carried over where not ``judged``), capped."""
    if not judged:
        return cplus, cminus
    return np_minimum(np_maximum(cplus + zz - k, 0.0), cap), np_minimum(np_maximum(cminus - zz - k, 0.0), cap)


@compiled(inline="always")
def _baseline(
    y: float, e: float, pred: float, level: float, trend: float, slow: float, bound: float, started: bool,
    accept: bool, alpha: float, beta: float, slow_alpha: float,
) -> tuple[float, float, float]:
    """(level, trend, slow level) of a seen value: Holt with the innovation clipped at ``bound``; an accepted shift
    is the new level."""
    ec = np_minimum(np_maximum(e, -bound), bound)
    moving = started and not accept
    new_slow = (slow + slow_alpha * ec) if math.isfinite(slow) else y
    return (pred + alpha * ec if moving else y), (trend + alpha * beta * ec if moving else 0.0), new_slow


@compiled(inline="always")
def _warm_up(warm, reference, r: int, f: int, y: float, count: float, warmup: int) -> float:
    """Take a seen value into the run's warm-up; at its last, the reference is their median. The new count."""
    if count < warmup:
        warm[r, f, int(min(count, warmup - 1))] = y
        if count + 1 >= warmup:
            reference[r, f] = np.median(warm[r, f])
    return count + 1.0


@compiled(inline="always")
def _innovation(
    e: float, sigma: float, judged: bool, was: float, z_clip: float, huber: float
) -> tuple[float, float, float, bool, float]:
    """(z, z with NaN as 0, the sigma divided by, whether this record extends an excursion beyond ``huber``, the
    signed count of records in a row beyond it) of innovation ``e``."""
    safe = sigma if judged else 1.0
    z = np_minimum(np_maximum(e / safe, -z_clip), z_clip) if judged else np.nan
    zz = 0.0 if z != z else z
    side = _sign(zz) if (judged and abs(zz) > huber) else 0.0
    excursion = side != 0 and _sign(was) == side
    return z, zz, safe, excursion, ((was + side if excursion else side) if judged else was)


@compiled(inline="always")
def _write_features(
    out, r: int, k: int, values: tuple[float, float, float, float, float, float, float], seen: bool, started: bool,
    judged: bool, absolute: bool,
) -> None:
    """A signal's :data:`~rftfm.fm.dynamics.PER_SIGNAL` features from ``values`` (z, CUSUM up, down, deviation
    from the slow level, trend, change since the warm-up, value), NaN where that kind is undefined."""
    z, cplus, cminus, dev_slow, trend, change0, y = values
    out[r, k], out[r, k + 3] = z, dev_slow if judged else np.nan
    out[r, k + 1], out[r, k + 2] = (cplus, cminus) if started else (np.nan, np.nan)
    out[r, k + 4] = trend if judged else np.nan
    out[r, k + 5] = change0 if seen else np.nan
    out[r, k + 6] = y if (seen and absolute) else np.nan


@compiled(error_model="numpy")
def advance(
    x, magnitude, level, trend, slow, noise, noise_n, noise_sum, previous, resolution, n, cplus, cminus,
    cplus_since, cminus_since, outside, warm, reference, records,
    new, warm_o, reference_o, records_o, out,
    is_log, is_relative, is_absolute, has_prior, prior, prior_floor, floor,
    alpha, beta, slow_alpha, huber, noise_gamma, prior_weight, all_time_floor, magnitude_fraction,
    cusum_k, z_clip, cusum_cap, warmup, adapt_after,
):  # pragma: no cover  (compiled: coverage cannot see inside)
    """One record ``x`` (R, F) of raw values (NaN = missing) against the state's arrays, which it never writes: the
    new state goes to ``new`` (15, R, F: the state's (R, F) fields in :class:`~rftfm.fm.dynamics.TrackerState`'s
    order), ``warm_o`` and ``reference_o`` (copies of the old ones) and ``records_o`` (the old count + 1), the
    features to ``out`` (R, F x 7 + 1). (Arrays handed in rather than returned: boxing 19 new arrays cost more than
    this record's arithmetic.)"""
    runs, signals = x.shape
    mag_o, level_o, trend_o, slow_o, noise_o = new[0], new[1], new[2], new[3], new[4]
    noise_n_o, noise_sum_o, previous_o, resolution_o, n_o = new[5], new[6], new[7], new[8], new[9]
    cplus_o, cminus_o, cplus_since_o, cminus_since_o, outside_o = new[10], new[11], new[12], new[13], new[14]
    for r in range(runs):
        for f in range(signals):
            y, mag_o[r, f] = _comparable(x[r, f], magnitude[r, f], is_log[f], magnitude_fraction)
            res = resolution[r, f]
            sigma = _noise_scale(noise_n[r, f], noise_sum[r, f], noise[r, f], res, has_prior[f], prior[f],
                                 prior_floor[f], floor[f], prior_weight, all_time_floor)
            lv, tr, sl = level[r, f], trend[r, f], slow[r, f]  # the innovation against the local-linear prediction
            seen, started, sigma_known = math.isfinite(y), math.isfinite(lv), math.isfinite(sigma)
            pred = lv + tr
            e = y - pred
            judged = seen and started and sigma_known
            z, zz, safe, excursion, beyond = _innovation(e, sigma, judged, outside[r, f], z_clip, huber)
            # while a shift builds up, the noise stands still: a fault does not teach the run that it is normal
            noise_o[r, f], noise_sum_o[r, f], count = _learn_noise(
                e, sigma, noise[r, f], noise_sum[r, f], noise_n[r, f], seen and started and not excursion, huber,
                noise_gamma,
            )
            # Holt with clipped innovations; a shift that persists ``adapt_after`` records is the new level
            accept = abs(beyond) >= adapt_after
            if seen:
                level_o[r, f], trend_o[r, f], slow_o[r, f] = _baseline(
                    y, e, pred, lv, tr, sl, huber * (sigma if sigma_known else np.inf), started, accept, alpha,
                    beta, slow_alpha,
                )
            else:
                level_o[r, f], trend_o[r, f], slow_o[r, f] = lv, tr, sl
            outside_o[r, f] = 0.0 if accept else beyond
            noise_n_o[r, f] = min(count, 2.0) if accept else count
            cp, cm = cplus[r, f], cminus[r, f]
            cplus_o[r, f], cminus_o[r, f] = _cusum(cp, cm, zz, judged, cusum_k, cusum_cap)
            cplus_since_o[r, f] = records_o[r] if (cp == 0 and cplus_o[r, f] > 0) else cplus_since[r, f]
            cminus_since_o[r, f] = records_o[r] if (cm == 0 and cminus_o[r, f] > 0) else cminus_since[r, f]
            n_o[r, f] = _warm_up(warm_o, reference_o, r, f, y, n[r, f], warmup) if seen else n[r, f]
            step = abs(y - previous[r, f])
            resolution_o[r, f] = np_fmin(res, step) if (seen and step > 0) else res  # the smallest change so far
            previous_o[r, f] = y if seen else previous[r, f]
            change0 = y - reference_o[r, f]
            if not is_relative[f]:
                change0 = change0 / (sigma if sigma_known else np.nan)
            values = (z, cplus_o[r, f], cminus_o[r, f], (y - sl) / safe, trend_o[r, f] / safe, change0, y)
            _write_features(out, r, f * 7, values, seen, started, judged, is_absolute[f])
        out[r, signals * 7] = math.log1p(records_o[r])
