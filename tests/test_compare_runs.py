"""scripts/compare_runs.py remediation: two evaluations' outcomes, run by run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair(run_id: str, **fields: Any) -> dict[str, Any]:
    pair = {
        "run_id": run_id, "fault_family": "od", "fault_type": "lr_high", "setting": "easy", "knob_repairable": True,
        "halt_only": False, "detected": True, "diagnosed": "lr_high", "loop_success": False,
        "trainside_success": False, "loop_halted": False, "trainside_halted": False, "loop_actions": [],
        "loop_accuracy": 0.5,
    }
    return pair | fields


def test_remediation_counts_each_file_and_names_the_runs_that_moved(capsys) -> None:
    code = dict(fault_family="ca", fault_type="advantage_sign", knob_repairable=False, halt_only=True)
    old = {
        "pairs": [
            _pair("knob"), _pair("code", **code, detected=False, diagnosed=None), _pair("same"), _pair("accuracy")
        ],
        "healthy": [{"run_id": "h", "interventions": 0, "halted": False}],
    }
    new = {
        "pairs": [
            _pair("knob", loop_success=True, loop_actions=["5:rollback"], loop_accuracy=0.7),
            _pair("code", **code, diagnosed="advantage_normalization"),  # detected, right family: alerted
            _pair("same"),
            _pair("accuracy", loop_accuracy=0.6),  # only its accuracy moved: not listed
        ],
        "healthy": [{"run_id": "h", "interventions": 1, "halted": False}],
    }
    _script().remediation(old, new)
    out = capsys.readouterr().out
    assert "old: knob-repairable repaired: easy loop 0 / 3, easy trainside 0 / 3" in out
    assert "new: knob-repairable repaired: easy loop 1 / 3" in out
    assert "right family 0 / 1" in out.splitlines()[0] and "right family 1 / 1" in out.splitlines()[1]
    assert "knob (knob): loop False -> True" in out and "loop_actions [] -> ['5:rollback']" in out
    assert "code (code fault): loop False -> True" in out and "detected False -> True" in out
    assert "same (" not in out and "accuracy (" not in out
    assert "healthy runs with an intervention (old): 0 of 1" in out
    assert "healthy runs with an intervention (new): 1 of 1 ['h']" in out
