"""The compiled level-shift update (:mod:`rftfm.fm.level_shift_kernel`) against the numpy form it replaced, kept
here as the oracle: the same statistics, window and reference means and state, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from rftfm.fm import level_shift
from rftfm.fm.level_shift import BASELINE, LOG_FLOORS, MIN_BASELINE, SIGNALS, WINDOW, LevelState, transform
from rftfm.fm.level_shift_kernel import pairwise_sum

_UNJUDGED = level_shift._UNJUDGED


class NumpyLevelState(LevelState):
    """:class:`LevelState` as it was written before it was compiled (stop 47)."""

    def advance(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take in one record's signals (len(SIGNALS),), in their own units; return each signal's statistic (the
        window's mean minus the reference's, in units of the reference's standard deviation), the window's mean and
        the reference's (both on the compared scale; read only where the statistic is not NaN: where the signal
        is judged at this record)."""
        x = transform(raw)
        present = np.isfinite(x)
        if not present.any():
            return _UNJUDGED
        step = np.abs(x - self.last)
        step[~(step > 0)] = np.inf  # a repeated value, or one of the two missing, is no step
        np.minimum(self.quantum, step, out=self.quantum)
        floor = np.maximum(LOG_FLOORS, self.quantum)
        np.copyto(self.last, x, where=present)
        if (present | (self.count == 0)).all():  # no gathering: the usual record (a signal never logged stays NaN)
            self.values[:, :-1] = self.values[:, 1:]
            self.values[:, -1] = x
        else:
            shifted = self.values[present]
            self.values[present, :-1] = shifted[:, 1:]
            self.values[present, -1] = x[present]
        self.count += present
        judged = present & (self.count >= WINDOW + MIN_BASELINE)
        if not judged.any():
            return _UNJUDGED
        # every row at once (a row not judged is masked below): cheaper than gathering the judged ones
        reference = self.values[:, :-WINDOW]  # left-padded with NaN while the run is young
        full = ((self.count == 0) | (self.count >= WINDOW + BASELINE)).all()  # no padding: every later record
        mean, spread = _mean_spread(reference, full)
        now = np.add.reduce(self.values[:, -WINDOW:], axis=1) / WINDOW
        stat = (now - mean) / np.maximum(spread, floor)
        stat[~judged] = np.nan
        return stat, now, mean

def _mean_spread(reference: np.ndarray, full: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row means and standard deviations of a reference; ``full``: no row is padded with NaN (the cheap path)."""
    if full:
        mean = np.add.reduce(reference, axis=1) / BASELINE
        centred = reference - mean[:, None]
        return mean, np.sqrt(np.add.reduce(centred * centred, axis=1) / BASELINE)
    n = np.maximum(np.isfinite(reference).sum(axis=1), 1)  # (a row never logged: NaN throughout)
    mean = np.nansum(reference, axis=1) / n
    centred = reference - mean[:, None]
    return mean, np.sqrt(np.nansum(centred * centred, axis=1) / n)


def _records(seed: int, n: int = 60) -> np.ndarray:
    """Raw values of the channel's signals: magnitudes and levels with a shift, NaN holes, zeros, repeated values
    and a signal that starts late."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(0, 2, len(SIGNALS)))
    raw = base * np.exp(rng.normal(0, 0.1, (n, len(SIGNALS))))
    raw[n // 2 :, rng.integers(len(SIGNALS), size=3)] *= 5.0
    raw[rng.random(raw.shape) < 0.15] = np.nan
    raw[rng.random(raw.shape) < 0.03] = 0.0
    raw[10:14, 0] = raw[9, 0]
    raw[:20, -1] = np.nan
    raw[25] = np.nan  # a record without any of them
    return raw


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_compiled_level_shift_update_gives_the_numpy_form_bit_for_bit(seed):
    compiled, numpy_form = LevelState(), NumpyLevelState()
    for raw in _records(seed):
        a, b = compiled.advance(raw), numpy_form.advance(raw)
        for got, expected in zip(a, b):
            judged = np.isfinite(b[0])
            np.testing.assert_array_equal(got[judged], expected[judged])
            np.testing.assert_array_equal(np.isfinite(a[0]), judged)
        for name in ("values", "count", "quantum", "last"):
            np.testing.assert_array_equal(getattr(compiled, name), getattr(numpy_form, name), err_msg=name)


@pytest.mark.parametrize("n", [1, 4, 7, 8, 9, 16, 20, 23, 64, 128])
def test_pairwise_sum_rounds_as_numpy_sums_a_row(n):
    rng = np.random.default_rng(n)
    for _ in range(50):
        row = rng.normal(size=n) * np.exp(rng.normal(0, 5, n))
        assert pairwise_sum(row) == np.add.reduce(row)
