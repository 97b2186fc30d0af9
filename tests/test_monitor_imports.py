"""The closed loop a user installs never pulls in the benchmark engine's trainer, the fault injectors or the CLI."""

from __future__ import annotations

import subprocess
import sys


def test_the_callback_imports_no_engine_trainer_injector_or_cli():
    code = (
        "import sys, rftfm.integrations.trl_callback, rftfm.integrations.batch_replay, rftfm.fm.loop; "
        "print(sorted(m for m in sys.modules if m.startswith(('rftfm.engine', 'rftfm.faults.injectors', "
        "'rftfm.cli', 'rftfm.bench'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_watching_a_log_imports_no_engine_injector_or_benchmark():
    code = (
        "import sys, rftfm.fm.monitor, rftfm.fm.detect, rftfm.fm.diagnose, rftfm.io.adapters, rftfm.report.html; "
        "print(sorted(m for m in sys.modules if m.startswith(('rftfm.engine', 'rftfm.faults.injectors', "
        "'rftfm.cli', 'rftfm.bench'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
