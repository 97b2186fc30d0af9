"""The benchmark's process pool: a per-worker initialiser runs before any task of that worker."""

from __future__ import annotations

import os

from rftfm.bench.pool import run_in_pool


def test_init_runs_in_every_worker_before_its_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # the in-process run below changes the directory; restored after
    here = str(tmp_path)
    # each spawned worker starts elsewhere; only its initialiser moves it to tmp_path
    assert list(run_in_pool(os.getcwd, [()] * 4, 2, init=(os.chdir, (here,)))) == [here] * 4
    assert list(run_in_pool(os.getcwd, [()] * 2, 1, init=(os.chdir, (here,)))) == [here] * 2
