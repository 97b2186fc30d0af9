"""The engine depends on the injector interface only: importing its trainer pulls in no fault module."""

from __future__ import annotations

import subprocess
import sys


def test_engine_trainer_imports_no_fault_module() -> None:
    code = ("import sys, rftfm.engine.trainer, rftfm.knobs, rftfm.engine.sft; "
            "print(sorted(m for m in sys.modules if m.startswith(('rftfm.faults', 'rftfm.bench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
