"""Records in a row: a calibrated channel alarms where its statistic is past its threshold at a record and at the
run's records just before it.

The channels whose thresholds are calibrated on healthy runs -- the learned and surprise channels, the rate shift,
the level shift, the loss penalty and the loss scale -- read a statistic that a healthy run of a configuration never
seen crosses now and then for one record (on the leave-configuration-out benchmark, every healthy run they alarmed
was first alarmed for one record in a row; docs/detection.md, stop 57). A fault persists after its onset. So each such
statistic is judged as its smallest value over the last ``records`` records of the run (the run's own records, in
order; a record where it is not judged, NaN, leaves the window unjudged), and its threshold is calibrated on that
same confirmed statistic (:meth:`rftfm.fm.detect.Detector.fit`). The fitting-free rules (invariants, non-finite
values, the schedule, the reward rules, the KL coefficient) alarm at once.

Written by hand: a running minimum over a run's present records (with gaps where ``logging_steps > 1``) and its
one-record streaming form; no library does this over a padded (runs, steps) cube.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confirmed(stat: np.ndarray, steps: np.ndarray, records: int) -> np.ndarray:
    """(R, S) each present record's statistic confirmed over the run's last ``records`` present records: their
    minimum (NaN where any of them is NaN or the run has fewer records so far: not judged; NaN where absent)."""
    out = np.where(steps > 0, stat, np.nan)
    if records <= 1:
        return out
    present = steps > 0
    before = [np.full(stat.shape[0], np.nan) for _ in range(records - 1)]  # the run's previous records, newest first
    for j in range(stat.shape[1]):
        here, value = present[:, j], out[:, j].copy()
        smallest = value
        for earlier in before:
            smallest = np.minimum(smallest, earlier)  # (NaN propagates: not judged)
        out[:, j] = np.where(here, smallest, np.nan)
        before = [np.where(here, new, old) for new, old in zip([value, *before[:-1]], before)]
    return out


def confirm_one(history: Sequence[float], records: int) -> float:
    """A live record's confirmed statistic: the minimum of the last ``records`` values of ``history`` (the record's
    own last), NaN where any is NaN or fewer than ``records`` are there."""
    if records <= 1:
        return float(history[-1]) if history else math.nan
    if len(history) < records:
        return math.nan
    last = history[-records:]
    return math.nan if any(v != v for v in last) else float(min(last))
