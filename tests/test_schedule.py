"""The schedule rule: a learning-rate push is a jump no warm-up or decay makes; every schedule itself is silent."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rftfm.fm.schedule import JUMP, ScheduleState, cube_units


def _units(lrs: list[float | None]) -> list[float]:
    state = ScheduleState()
    return [state.advance(lr) for lr in lrs]


def _transformers_like(kind: str, total: int, warmup: int, every: int, peak: float = 1e-5) -> list[float]:
    """The learning rate a transformers schedule logs every ``every`` steps (decay to 0 at ``total``)."""
    out = []
    for step in range(every, total + 1, every):
        if step < warmup:
            factor = step / warmup
        else:
            progress = (step - warmup) / max(1, total - warmup)
            factor = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else max(0.0, 1 - progress)
        out.append(peak * factor)
    return out


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("every", [1, 5, 10, 50])
@pytest.mark.parametrize("warmup", [0, 10, 100])
def test_no_warm_up_or_decay_to_zero_is_a_jump(kind, every, warmup):
    lrs = [1e-5] * 40 if kind == "constant" else _transformers_like(kind, 1000, warmup, every)
    assert max(abs(u) for u in _units(lrs)) <= 1.0


def test_a_push_up_or_down_from_a_flat_or_gentle_stretch_is_a_jump_at_that_record_only():
    base = _transformers_like("cosine", 200, 10, 1)
    pushed_up = base[:60] + [30 * lr for lr in base[60:]]
    units = _units(pushed_up)
    assert units[60] > 1 and units[60] == pytest.approx(math.log(30) / math.log(JUMP), rel=0.05)
    assert max(abs(u) for i, u in enumerate(units) if i != 60) <= 1
    pushed_down = base[:80] + [lr / 10 for lr in base[80:]]
    units = _units(pushed_down)
    assert units[80] < -1 and max(abs(u) for i, u in enumerate(units) if i != 80) <= 1


def test_nothing_is_judged_before_two_ratios_and_a_missing_rate_changes_nothing():
    assert _units([1e-5, 3e-4]) == [0.0, 0.0]  # a push at step 1 is not a jump
    assert _units([1e-5, 1e-5, None, float("nan"), 3e-4])[-1] > 1  # missing records skipped, not a reset
    assert _units([0.0, 0.0, 1e-5, 1e-5]) == [0.0] * 4  # a warm-up from 0
    assert _units([1e-5, 1e-5, 0.0])[-1] < -1  # zeroed mid-run
    assert all(math.isfinite(u) for u in _units([1e-5, 1e-5, 0.0, 1e-5]))


def test_a_change_the_caller_made_is_taken_out_and_the_rest_is_judged():
    state = ScheduleState()
    for lr in (1e-5, 1e-5, 1e-5):
        state.advance(lr)
    state.expect(0.1)
    assert abs(state.advance(1e-6)) < 1e-9  # the loop's own cut
    state.expect(0.3)
    assert state.advance(30 * 0.3 * 1e-6) > 1  # a push that outlasts the loop's cut is still seen


def test_a_cosine_with_hard_restarts_is_no_jump_but_a_push_beyond_the_runs_peak_is():
    cycle = _transformers_like("cosine", 100, 0, 5)[:-1]
    assert max(abs(u) for u in _units(cycle * 3)) <= 1.0  # each restart returns to the run's own peak
    pushed = cycle * 2 + [30 * lr for lr in cycle]  # the third cycle starts 30-fold above the peak
    units = _units(pushed)
    assert units[2 * len(cycle)] > 1 and sum(u > 1 for u in units) == 1
    late = cycle[:-2] + [30 * cycle[-2]]  # a push late in a decay that lands below the peak: a documented blind spot
    assert late[-1] < cycle[0] and _units(late)[-1] == 0.0


def test_cube_units_equal_the_streaming_units():
    rng = np.random.default_rng(0)
    lr = np.exp(rng.normal(-10, 1.5, size=(3, 12)))
    lr[1, 4] = np.nan
    steps = np.tile(np.arange(1, 13), (3, 1))
    steps[2, 6:] = 0
    expected = np.zeros_like(lr)
    for r in range(3):
        state = ScheduleState()
        for s in np.flatnonzero(steps[r] > 0):
            expected[r, s] = state.advance(float(lr[r, s]))
    np.testing.assert_array_equal(cube_units(lr, steps), expected)


def test_the_loops_own_learning_rate_change_reaches_the_detector_through_sensing():
    from rftfm.fm.detect import Detector
    from rftfm.fm.incidents import MemoryIncidentStore
    from rftfm.fm.ledger import Journal
    from rftfm.fm.sensing import Sensing
    from rftfm.records import StepRecord

    def verdicts(cut_announced: bool) -> list[bool]:
        journal = Journal(MemoryIncidentStore(), "own", 100)
        sensing = Sensing(Detector.load_default(), None, journal, lambda stage, fn: (True, fn()), task_group=None,
                          model_size=None, max_history=100)
        sensing.reset_detector()
        out = []
        for step in range(1, 12):
            if step == 8 and cut_announced:
                sensing.knob_set("learning_rate", 1e-5, 1e-6)
            record = StepRecord(run_id="own", step=step, reward_mean=0.5, reward_std=0.3, kl=0.01, entropy=1.0,
                                learning_rate=1e-5 if step < 8 else 1e-6)
            ok, alarm = sensing.detect(record, [], 0)
            out.append(ok and alarm is not None and alarm.evidence[0].signal == "learning_rate")
        return out

    assert verdicts(cut_announced=False)[7] and not any(verdicts(cut_announced=True))


def test_a_scheduler_that_jumps_by_design_silences_the_channel():
    from transformers import SchedulerType

    from rftfm.fm.detect import Detector
    from rftfm.fm.schedule import jumps_by_design
    from rftfm.records import StepRecord

    assert jumps_by_design(SchedulerType.COSINE_WITH_RESTARTS) and jumps_by_design("reduce_lr_on_plateau")
    assert not jumps_by_design(SchedulerType.COSINE) and not jumps_by_design(None)
    detector = Detector.load_default()
    detector.know_schedule(True)
    detector.reset("plateau")
    for step in range(1, 10):
        lr = 1e-5 if step < 6 else 1e-6  # reduce-on-plateau's 10-fold cut
        detector.observe(StepRecord(run_id="plateau", step=step, reward_mean=0.5, kl=0.01, learning_rate=lr))
        assert detector.last_score is not None and detector.last_score < 1.0
