"""Small, real objects for tests and fuzzing (not used by the library itself)."""

from __future__ import annotations

import numpy as np
import polars as pl

from rftfm.fm.detect import Detector
from rftfm.fm.features import FEATURES


def synthetic_detector(runs: int = 8, steps: int = 12, seed: int = 0) -> Detector:
    """A detector fitted on synthetic normal runs, independent of the shipped artifact."""
    rng = np.random.default_rng(seed)
    rows = [{"run_id": f"n{r}", "step": s, **{f: float(rng.normal(1.0 + 0.01 * s, 0.1)) for f in FEATURES}}
            for r in range(runs) for s in range(1, steps + 1)]
    info = pl.DataFrame({"run_id": [f"n{r}" for r in range(runs)], "task_group": ["arith_a"] * runs,
                         "model_size": ["xs"] * runs, "control_or_fault": ["normal"] * runs})
    return Detector().fit(info, pl.DataFrame(rows))
