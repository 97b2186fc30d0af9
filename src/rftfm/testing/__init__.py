"""Small, real objects for tests and fuzzing (not used by the library itself)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from rftfm.fm.detect import Detector
from rftfm.fm.features import FEATURES
from rftfm.fm.playbook import Rung
from rftfm.fm.remediate import Plan, Remediator
from rftfm.fm.types import Action, Alarm, SignalEvidence


def synthetic_detector(runs: int = 8, steps: int = 12, seed: int = 0) -> Detector:
    """A detector fitted on synthetic normal runs, independent of the shipped artifact."""
    rng = np.random.default_rng(seed)
    rows = [
        {"run_id": f"n{r}", "step": s, **{f: float(rng.normal(1.0 + 0.01 * s, 0.1)) for f in FEATURES}}
        for r in range(runs)
        for s in range(1, steps + 1)
    ]
    info = pl.DataFrame(
        {
            "run_id": [f"n{r}" for r in range(runs)],
            "task_group": ["arith_a"] * runs,
            "model_size": ["xs"] * runs,
            "control_or_fault": ["normal"] * runs,
        }
    )
    return Detector().fit(info, pl.DataFrame(rows))


class OnsetAlarm:
    """A detector with one strong alarm, one step after ``onset``, whose evidence dates the
    deviation to ``onset`` (the loop then rolls back to its checkpoint at or before onset - 2)."""

    def __init__(self, onset: int):
        self.onset, self.fired = onset, False

    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None: ...

    def observe(self, record: Any, trajectories: list[Any]) -> Alarm | None:
        if self.fired or record.step != self.onset + 1:
            return None
        self.fired = True
        return Alarm(
            run_id=record.run_id,
            step=record.step,
            score=10.0,
            threshold=1.0,
            evidence=[SignalEvidence(signal="eval_accuracy", direction="down", z=10.0, since_step=self.onset)],
        )


class RollbackOnly(Remediator):
    """A remediator whose one intervention is a rollback, no knob turned (acts without a diagnosis)."""

    RUNG = Rung("probe: roll back to before the onset and replay", "[ckpt]", rollback=True)

    def __init__(self) -> None:
        super().__init__(generic=True)

    def plan(self, *args: Any, **kwargs: Any) -> Plan | None:
        if self.interventions:
            return None
        self.interventions += 1
        return Plan(
            fault_type=None, rung_index=0, rung=self.RUNG, actions=[Action(kind="rollback", reason=self.RUNG.reason)]
        )


class AfterSpike:
    """A detector with one strong alarm at the first logged step after ``onset``, whose evidence dates
    the deviation to ``onset`` (a stand-in that makes the loop's plumbing testable whatever the detector)."""

    def __init__(self, onset: int):
        self.onset, self.fired = onset, False

    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None: ...

    def observe(self, record: Any, trajectories: list[Any]) -> Alarm | None:
        if self.fired or record.step <= self.onset:
            return None
        self.fired = True
        return Alarm(
            run_id=record.run_id,
            step=record.step,
            score=10.0,
            threshold=1.0,
            evidence=[SignalEvidence(signal="grad_norm", direction="up", z=10.0, since_step=self.onset)],
        )
