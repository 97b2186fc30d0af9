"""Diagnosis features: how a run's history up to an alarm moved, each signal against the run itself.

Built on :class:`~rftfm.fm.dynamics.DynamicsTracker` (the detector's scale-free view): for every
signal ``s`` of :data:`~rftfm.fm.cube.CUBE_SIGNALS` and the history up to the diagnosis step
(only what is known live):

* ``z_recent.s``  mean innovation (in the run's own noise units) over the last :data:`RECENT` records;
* ``z_peak.s``    the largest innovation (signed) over the last :data:`PEAK_WINDOW` records;
* ``cusum_up.s`` / ``cusum_down.s``  the accumulated shift at the diagnosis step;
* ``dev_slow.s``, ``trend.s``, ``change0.s``  drift from the slow baseline, trend, change since the
  run's own warm-up;
* ``level.s``     the level of a fraction, else missing -- with ``TrackerConfig.task_levels``, also of a
  fraction whose healthy level the task sets (which fault an alarm is, not whether there is one);
* ``shift.s``     the level-shift channel's two-window statistic (:mod:`rftfm.fm.level_shift`) at the diagnosis step:
  the last few values' mean against the run's values before, in their sd (missing for a signal it does not judge).

Nothing here depends on a configuration's units or on normal runs of the user's setup; label
columns are never read. :func:`mask_tiers` hides the signals an input tier lacks.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import polars as pl

from rftfm.fm import level_shift
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube
from rftfm.fm.dynamics import DynamicsTracker

RECENT = 3
PEAK_WINDOW = 8
NOW_KINDS = ("cusum_up", "cusum_down", "dev_slow", "trend", "change0", "level")
KINDS = ("z_recent", "z_peak") + NOW_KINDS + ("shift",)


def diagnosis_feature_names(signals: Sequence[str] = CUBE_SIGNALS) -> list[str]:
    return [f"{kind}.{name}" for kind in KINDS for name in signals]


def _owner(name: str) -> str:
    return name.split(".", 1)[1]


def vectors(
    tracked: np.ndarray, steps: np.ndarray, at: Sequence[int], tracker: DynamicsTracker, raw: np.ndarray
) -> np.ndarray:
    """Diagnosis vectors of one run at steps ``at``, from its tracker features ``tracked`` (S, D), its raw signals
    ``raw`` (S, len(CUBE_SIGNALS)) and step numbers ``steps`` (S,) (0 = absent)."""
    names = tracker.names
    n = len(tracker.signals)
    z = tracked[:, [names.index(f"{s}:z") for s in tracker.signals]]
    now = [tracked[:, [names.index(f"{s}:{k}") for s in tracker.signals]] for k in NOW_KINDS]
    shift = np.full((steps.size, n), np.nan)
    shift[:, [tracker.signals.index(s) for s in level_shift.SIGNALS]] = level_shift.cube_stats(
        raw[None], steps[None]
    )[0]
    now.append(shift)
    out = np.full((len(at), n * len(KINDS)), np.nan)
    for row, step in enumerate(at):
        present = np.flatnonzero((steps > 0) & (steps <= step))
        if present.size == 0:
            continue
        last = present[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            recent = np.nanmean(z[present[-RECENT:]], axis=0)
        window = z[present[-PEAK_WINDOW:]]
        filled = np.where(np.isfinite(window), window, 0.0)
        peak_at = np.argmax(np.abs(filled), axis=0)
        peak = window[peak_at, np.arange(n)]
        out[row] = np.concatenate([recent, peak] + [k[last] for k in now])
    return out


def diagnosis_matrix(
    features: pl.DataFrame, at_steps: dict[str, list[int]], tracker: DynamicsTracker
) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Vectors of many (run, step) pairs: each run is tracked once and read at every requested step."""
    run_ids = [r for r in at_steps if r in set(features["run_id"].unique().to_list())]
    rows, keys = [], []
    if run_ids:
        cube, steps = runs_cube(features, run_ids)
        tracked = tracker.run_cube(cube)
        for i, run_id in enumerate(run_ids):
            rows.append(vectors(tracked[i], steps[i], at_steps[run_id], tracker, cube[i]))
            keys += [(run_id, int(s)) for s in at_steps[run_id]]
    width = len(tracker.signals) * len(KINDS)
    return (np.vstack(rows) if rows else np.zeros((0, width))), keys


def mask_signals(x: np.ndarray, names: Sequence[str], keep: Sequence[str]) -> np.ndarray:
    """``x`` with the features of every signal outside ``keep`` missing."""
    hidden = np.array([_owner(n) not in set(keep) for n in names])
    out = x.copy()
    out[:, hidden] = np.nan
    return out
