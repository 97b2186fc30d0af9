"""The compiled tracker update (:mod:`rftfm.fm.dynamics_kernel`) against the vectorised numpy form it replaced,
kept here as the oracle: the same features and states, bit for bit, on records with missing values, exact zeros,
jumps and a rollback-style copy, with and without a prior noise. The kernel calls the C library's asinh and log1p;
numpy's own SIMD forms of them (in its AVX-512 builds, e.g. on AMD Zen 4) differ in the last bit or two, so the
oracle calls the C library's where they differ."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.dynamics import PER_SIGNAL, DynamicsTracker, TrackerConfig, TrackerState, clip

MAD_TO_SD_MEAN = 1.2533


def _libm(numpy_form: np.ufunc, c_form, low: float, high: float) -> np.ufunc:
    """numpy's ufunc where it gives the C library's numbers on [low, high] on this machine, else the C library's,
    element-wise."""
    x = np.linspace(low, high, 4001)
    return numpy_form if np.array_equal(numpy_form(x), [c_form(v) for v in x]) else np.vectorize(c_form, otypes=[float])


ARCSINH, LOG1P = _libm(np.arcsinh, math.asinh, -20.0, 20.0), _libm(np.log1p, math.log1p, 0.0, 1000.0)


def _nan_to_zero(values: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(values), 0.0, values)


class NumpyTracker(DynamicsTracker):
    """The update as it was written before it was compiled (stop 47), one numpy call per operation."""

    def transform(self, state: TrackerState, x: np.ndarray) -> np.ndarray:
        """(R, F) raw -> comparable scale; sets each log signal's ``c`` at its first non-zero value (NaN arithmetic
        is expected: called inside :meth:`update`'s ``errstate``)."""
        unset = self.is_log & np.isnan(state.magnitude)
        if unset.any():  # (once every log signal has its c -- a live run's usual record -- nothing to set)
            first = unset & np.isfinite(x) & (np.abs(x) > 0)
            state.magnitude = np.where(first, self.config.magnitude_fraction * np.abs(x), state.magnitude)
        logged = ARCSINH(x / state.magnitude)
        # a log signal before its first non-zero value (a KL of exactly 0 at step 1) is not yet comparable;
        # an exact 0 is no magnitude at all (a reward sd or grad norm of a batch whose groups all tied: the
        # fraction of zero-variance groups says so) and is left out rather than read as a 100-fold fall
        usable = np.isfinite(state.magnitude) & (x != 0)
        return np.where(self.is_log, np.where(usable, logged, np.nan), x)

    def noise_scale(self, state: TrackerState) -> np.ndarray:
        """(R, F) the noise scale in use: own estimate shrunk towards the prior (NaN: unknown; called inside
        :meth:`update`'s ``errstate``)."""
        w = self.config.prior_weight
        n = state.noise_n
        all_time = np.where(n > 0, state.noise_sum / np.maximum(n, 1), np.nan)
        own = np.fmax(state.noise, self.config.all_time_floor * all_time)  # NaN only where both are
        blended = np.sqrt((w * self.prior**2 + n * _nan_to_zero(own) ** 2) / (w + n))
        # no prior (the user's units): unknown until the signal has moved, and never below its resolution
        unpriored = np.where((n >= 3) & np.isfinite(state.resolution), own, np.nan)
        scale = np.where(self.has_prior, blended, unpriored)
        floor = np.where(self.has_prior, self.prior_floor, np.fmax(self.floor, state.resolution))
        return np.maximum(scale, floor)

    def update(self, state: TrackerState, x: np.ndarray) -> np.ndarray:
        """Advance ``state`` by one record of raw values ``x`` (R, F) (NaN = missing); features (R, D)."""
        with np.errstate(invalid="ignore", divide="ignore"):  # entered once per record, not in every helper
            return self._update(state, x)

    def _update(self, state: TrackerState, x: np.ndarray) -> np.ndarray:
        cfg = self.config
        y = self.transform(state, np.asarray(x, dtype=float))
        seen = np.isfinite(y)
        started = np.isfinite(state.level)
        sigma = self.noise_scale(state)
        pred = state.level + state.trend
        e = y - pred
        judged = seen & started & np.isfinite(sigma)
        safe_sigma = np.where(judged, sigma, 1.0)
        z = np.where(judged, clip(e / safe_sigma, -cfg.z_clip, cfg.z_clip), np.nan)
        dev_slow = np.where(judged, (y - state.slow) / safe_sigma, np.nan)
        zz = _nan_to_zero(z)
        # a shift that persists is the run's new level; while one builds up, the noise estimate stands
        # still, so a fault does not teach the run that it is normal
        side = np.where(judged & (np.abs(zz) > cfg.huber), np.sign(zz), 0.0)
        excursion = (side != 0) & (np.sign(state.outside) == side)
        outside = np.where(judged, np.where(excursion, state.outside + side, side), state.outside)
        self._learn_noise(state, e, sigma, seen & started & ~excursion)
        self._move_baseline(state, y, e, pred, sigma, seen, started, outside)
        self._accumulate(state, zz, judged)
        self._warm_up(state, y, seen)
        self._learn_resolution(state, y, seen)
        state.records = state.records + 1
        change0 = np.where(
            self.is_relative,
            y - state.reference,
            (y - state.reference) / np.where(np.isfinite(sigma), sigma, np.nan),
        )
        out = np.empty((y.shape[0], y.shape[1] * len(PER_SIGNAL) + 1))
        per = out[:, :-1].reshape(y.shape[0], y.shape[1], len(PER_SIGNAL))  # a view: filled in place (cheaper
        per[..., 0] = z  # than stacking seven arrays and concatenating, at every live record)
        per[..., 1] = np.where(started, state.cplus, np.nan)
        per[..., 2] = np.where(started, state.cminus, np.nan)
        per[..., 3] = dev_slow
        per[..., 4] = np.where(judged, state.trend / safe_sigma, np.nan)
        per[..., 5] = np.where(seen, change0, np.nan)
        per[..., 6] = np.where(seen & self.is_absolute, y, np.nan)
        out[:, -1] = LOG1P(state.records)  # GLOBAL: log_records
        return out

    def _learn_noise(self, state: TrackerState, e: np.ndarray, sigma: np.ndarray, learn: np.ndarray) -> None:
        """Mean absolute innovation, each clipped at ``huber`` noise units (an underestimated noise still
        grows back: a clipped innovation is larger than the estimate)."""
        cfg = self.config
        a = np.abs(e) * MAD_TO_SD_MEAN
        a = np.where(np.isfinite(sigma), np.minimum(a, cfg.huber * MAD_TO_SD_MEAN * _nan_to_zero(sigma)), a)
        updated = np.where(np.isfinite(state.noise), (1 - cfg.noise_gamma) * state.noise + cfg.noise_gamma * a, a)
        state.noise = np.where(learn, updated, state.noise)
        state.noise_sum = state.noise_sum + np.where(learn, _nan_to_zero(a), 0.0)
        state.noise_n = state.noise_n + learn

    @staticmethod
    def _learn_resolution(state: TrackerState, y: np.ndarray, seen: np.ndarray) -> None:
        """The smallest non-zero change between consecutive values (after this record is judged)."""
        step = np.abs(y - state.previous)
        moved = seen & (step > 0)  # False where either value is NaN
        state.resolution = np.where(moved, np.fmin(state.resolution, step), state.resolution)
        state.previous = np.where(seen, y, state.previous)

    def _move_baseline(
        self,
        state: TrackerState,
        y: np.ndarray,
        e: np.ndarray,
        pred: np.ndarray,
        sigma: np.ndarray,
        seen: np.ndarray,
        started: np.ndarray,
        outside: np.ndarray,
    ) -> None:
        """Holt with clipped innovations; a shift that persists ``adapt_after`` records is accepted as the
        new level (the noise is then relearnt)."""
        cfg = self.config
        bound = cfg.huber * np.where(np.isfinite(sigma), sigma, np.inf)
        ec = clip(e, -bound, bound)
        accept = np.abs(outside) >= cfg.adapt_after
        level = np.where(accept, y, np.where(started, pred + cfg.alpha * ec, y))
        trend = np.where(accept | ~started, 0.0, state.trend + cfg.alpha * cfg.beta * ec)
        state.outside = np.where(accept, 0.0, outside)
        state.noise_n = np.where(accept, np.minimum(state.noise_n, 2.0), state.noise_n)
        state.level = np.where(seen, level, state.level)
        state.trend = np.where(seen, trend, state.trend)
        state.slow = np.where(seen, np.where(np.isfinite(state.slow), state.slow + cfg.slow_alpha * ec, y), state.slow)

    def _accumulate(self, state: TrackerState, zz: np.ndarray, judged: np.ndarray) -> None:
        """Two-sided CUSUM of the innovations (carried over while a signal is missing), capped."""
        cfg = self.config
        cplus = np.where(judged, clip(state.cplus + zz - cfg.cusum_k, 0.0, cfg.cusum_cap), state.cplus)
        cminus = np.where(judged, clip(state.cminus - zz - cfg.cusum_k, 0.0, cfg.cusum_cap), state.cminus)
        records = state.records[:, None] + 1
        state.cplus_since = np.where((state.cplus == 0) & (cplus > 0), records, state.cplus_since)
        state.cminus_since = np.where((state.cminus == 0) & (cminus > 0), records, state.cminus_since)
        state.cplus, state.cminus = cplus, cminus

    def _warm_up(self, state: TrackerState, y: np.ndarray, seen: np.ndarray) -> None:
        """The run's own reference: the median of its first ``warmup`` values of each signal."""
        warmup = self.config.warmup
        filling = seen & (state.n < warmup)
        if not filling.any():  # past every signal's warm-up (a live run's usual record): nothing to fill
            state.n = state.n + seen
            return
        slot = np.minimum(state.n, warmup - 1).astype(int)
        r_idx, f_idx = np.nonzero(filling)
        state.warm = state.warm.copy()  # a new array, never a write into one a frozen state may hold
        state.warm[r_idx, f_idx, slot[r_idx, f_idx]] = y[r_idx, f_idx]
        state.n = state.n + seen
        done = filling & (state.n >= warmup)
        if done.any():  # a finished warm-up holds ``warmup`` finite values: np.median (nanmedian's masked-array
            # path cost about ten times as much, at one record of every run)
            state.reference = np.where(
                done, np.median(np.where(done[..., None], state.warm, 0.0), axis=-1), state.reference
            )



def _cube(seed: int, runs: int = 6, records: int = 40) -> np.ndarray:
    """Raw records of every cube signal: geometric magnitudes, fractions, signed levels, with NaN holes, exact
    zeros, a jump and a few runs that end early."""
    rng = np.random.default_rng(seed)
    steps = np.arange(records)
    cube = np.empty((runs, records, len(CUBE_SIGNALS)))
    for f in range(len(CUBE_SIGNALS)):
        kind = rng.integers(3)
        if kind == 0:
            cube[:, :, f] = np.exp(rng.normal(0, 1) + 0.03 * steps + rng.normal(0, 0.2, (runs, records)))
        elif kind == 1:
            cube[:, :, f] = np.clip(rng.uniform(0, 1) + rng.normal(0, 0.05, (runs, records)), 0, 1)
        else:
            cube[:, :, f] = rng.normal(0, 1) + 0.01 * steps + rng.normal(0, 0.3, (runs, records))
    cube[rng.random(cube.shape) < 0.1] = np.nan
    cube[rng.random(cube.shape) < 0.03] = 0.0
    cube[:, records // 2 :, rng.integers(len(CUBE_SIGNALS), size=5)] *= 20.0
    cube[0, records - 10 :] = np.nan  # a run that ended
    cube[1, :, 3] = np.nan  # a signal never logged
    return cube


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_prior", [True, False])
def test_the_compiled_update_gives_the_numpy_form_bit_for_bit(seed, with_prior):
    cube = _cube(seed)
    prior = np.random.default_rng(seed).uniform(0.01, 0.5, len(CUBE_SIGNALS)) if with_prior else None
    if prior is not None:
        prior[::4] = np.nan  # some signals without a prior
    config = TrackerConfig(task_levels=bool(seed % 2))
    compiled, numpy_form = DynamicsTracker(CUBE_SIGNALS, prior, config), NumpyTracker(CUBE_SIGNALS, prior, config)
    np.testing.assert_array_equal(compiled.run_cube(cube), numpy_form.run_cube(cube))
    a, b = compiled.new_state(len(cube)), numpy_form.new_state(len(cube))
    for s in range(cube.shape[1]):
        if s == 25:  # a rollback restores a copy: the update never writes into a state's arrays
            kept = a.frozen()
            before = {f.name: getattr(kept, f.name).copy() for f in fields(kept)}
        np.testing.assert_array_equal(compiled.update(a, cube[:, s]), numpy_form.update(b, cube[:, s]))
    for f in fields(a):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)
        np.testing.assert_array_equal(getattr(kept, f.name), before[f.name], err_msg=f.name)
