"""Every fault type moves its registered fingerprint against the matched clean run (same seed)."""

from __future__ import annotations

import pytest
import torch

from rftfm.bench.fingerprints import FINGERPRINT_TASK, clean_info, matched_pair, run_feature_means
from rftfm.faults.taxonomy import FAULT_TYPES

SEED, STEPS = 3, 16
_clean: dict[str, dict[str, float]] = {}


def clean_means(task: str) -> dict[str, float]:
    if task not in _clean:
        _clean[task] = run_feature_means(clean_info(task, SEED, STEPS))
    return _clean[task]


@pytest.fixture(autouse=True)
def single_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("fault", sorted(FAULT_TYPES))
def test_easy_fault_moves_every_fingerprint_signal(fault: str) -> None:
    pair = matched_pair(fault, "easy", seed=SEED, num_steps=STEPS, clean=clean_means(FINGERPRINT_TASK[fault]))
    for signal, direction in FAULT_TYPES[fault].signals:
        assert pair.moved(signal, direction), (
            f"{fault} easy: {signal} expected {direction}: clean {pair.clean[signal]:.4f} faulty {pair.faulty[signal]:.4f}"
        )


@pytest.mark.parametrize("fault", sorted(FAULT_TYPES))
def test_hard_fault_moves_its_primary_signal(fault: str) -> None:
    pair = matched_pair(fault, "hard", seed=SEED, num_steps=STEPS, clean=clean_means(FINGERPRINT_TASK[fault]))
    signal, direction = FAULT_TYPES[fault].signals[0]
    assert pair.moved(signal, direction), (
        f"{fault} hard: {signal} expected {direction}: clean {pair.clean[signal]:.4f} faulty {pair.faulty[signal]:.4f}"
    )
