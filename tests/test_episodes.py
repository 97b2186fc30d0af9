"""Alarm episodes end either with the run back at its earlier level or settled away from it."""

from __future__ import annotations

import math

from rftfm.fm.monitor import CAME_BACK, EpisodeTracker, lasting_deviations, replaces
from rftfm.fm.types import Alarm, Diagnosis, Hypothesis, SignalEvidence
from rftfm.report.sections import episode_ending


def _length_drop(value: float = 10.0, expected: float = 100.0) -> SignalEvidence:
    return SignalEvidence(signal="completion_length_mean", direction="down", value=value, expected=expected, z=-9.0,
                          since_step=5)


def test_a_positive_magnitude_is_judged_as_a_ratio():
    ev = _length_drop()  # x0.1: halfway back on the log scale is x0.316, not 55
    assert lasting_deviations([ev], {"completion_length_mean": [30.0, 34.0]}) == []
    (kept,) = lasting_deviations([ev], {"completion_length_mean": [20.0, 24.0]})
    assert kept.value == 22.0 and kept.expected == 100.0 and kept.since_step == 5
    assert math.isclose(kept.ratio, 0.22)
    assert abs(math.log(0.22)) > CAME_BACK * abs(math.log(0.1))


def test_a_signed_level_is_judged_as_a_difference_and_an_overshoot_is_still_away():
    ev = SignalEvidence(signal="reward_mean", direction="down", value=-1.0, expected=0.0, z=-8.0)
    assert lasting_deviations([ev], {"reward_mean": [-0.4, -0.5]}) == []
    assert len(lasting_deviations([ev], {"reward_mean": [0.8, 0.9]})) == 1  # far past the baseline the other way


def test_a_kl_coefficient_is_judged_on_the_loss_per_unit_of_kl_as_a_ratio():
    ev = SignalEvidence(signal="policy_loss", direction="down", value=0.0004, expected=0.04, z=-4.6, since_step=20,
                        per_kl=True)
    (kept,) = lasting_deviations([ev], {"policy_loss": [0.0002, 0.0004], "kl": [0.5, 1.0]})  # still 0.0004 per KL
    assert kept.per_kl and math.isclose(kept.value, 0.0004) and kept.expected == 0.04
    assert lasting_deviations([ev], {"policy_loss": [0.004, 0.008], "kl": [0.2, 0.2]}) == []  # 0.03: back (log)
    assert lasting_deviations([ev], {"policy_loss": [0.01, None], "kl": [None, 0.2]}) is None  # no ratio to judge


def test_signals_without_a_baseline_or_without_values_are_not_judged():
    no_baseline = SignalEvidence(signal="kl", direction="up", value=0.5)
    assert lasting_deviations([no_baseline], {"kl": [0.5, 0.5]}) is None
    assert lasting_deviations([_length_drop()], {"completion_length_mean": [None, None]}) is None
    assert lasting_deviations([_length_drop()], {}) is None


def test_a_number_that_stopped_being_finite_is_back_once_it_is_finite_again():
    lost = SignalEvidence(signal="grad_norm", direction="up", expected=1.3, non_finite=True, since_step=9)
    assert lasting_deviations([lost], {"grad_norm": [None, None, None]}) == [lost]
    assert lasting_deviations([lost], {"grad_norm": [None, 1.1, 1.2]}) == []


def _run(tracker: EpisodeTracker, lengths: list[float], alarmed: set[int], give_values: bool = True):
    changes = []
    for step, length in enumerate(lengths, start=1):
        alarm = Alarm(run_id="r", step=step, score=2.0, threshold=1.0, evidence=[_length_drop()]) if step in alarmed \
            else None
        values = {"completion_length_mean": length} if give_values else None
        changes += tracker.step(step, alarm, values)
    return changes


def test_an_episode_says_whether_the_run_came_back_when_it_clears():
    settled = _run(EpisodeTracker("r"), [100, 100, 10, 10, 10, 10, 10], alarmed={3, 4})
    assert [c for c, _ in settled] == ["start", "clear"]
    episode = settled[-1][1]
    assert not episode.open and [e.signal for e in episode.lasting] == ["completion_length_mean"]
    assert episode_ending(episode).startswith("alarms stopped, the run did not come back: completion_length_mean ↓ 10")
    recovered = _run(EpisodeTracker("r"), [100, 100, 10, 95, 98, 101, 100], alarmed={3})[-1][1]
    assert recovered.lasting == [] and episode_ending(recovered) == "alarms stopped, the run came back"
    unjudged = _run(EpisodeTracker("r"), [100, 100, 10, 10, 10, 10], alarmed={3}, give_values=False)[-1][1]
    assert unjudged.lasting is None and episode_ending(unjudged) == "alarms stopped"


def test_an_alarm_during_the_quiet_steps_starts_their_count_again():
    tracker = EpisodeTracker("r")
    changes = _run(tracker, [100, 100, 10, 90, 10, 95, 99, 100], alarmed={3, 5})
    (cleared,) = [e for c, e in changes if c == "clear"]
    assert cleared.end_step == 5 and cleared.lasting == []  # judged on steps 6-8 only


def _diagnosis(step: int, fault_type: str | None, p: float = 0.0) -> Diagnosis:
    ranked = [Hypothesis(family="pg", fault_type=fault_type, probability=p)] if fault_type else []
    return Diagnosis(run_id="r", step=step, ranked=ranked, unknown=fault_type is None)


def test_a_later_diagnosis_names_another_cause_only_when_it_is_at_least_as_sure_of_it():
    tracker = EpisodeTracker("r")
    tracker.step(1, Alarm(run_id="r", step=1, score=2.0, threshold=1.0, evidence=[_length_drop()]))
    assert tracker.diagnose(_diagnosis(1, "length_truncation", 0.53)) is False  # the first: no change to tell
    # deep into the episode, a weaker diagnosis that read no deviation (the IITD log at step 410): kept out
    assert tracker.diagnose(_diagnosis(40, "numerical_blowup", 0.25)) is False
    assert tracker.diagnose(_diagnosis(41, None)) is False  # an abstention never replaces a named cause
    assert tracker.current.diagnosis.top.fault_type == "length_truncation"
    assert tracker.diagnose(_diagnosis(42, "length_truncation", 0.31)) is False  # the same cause: refreshed
    assert tracker.current.diagnosis.step == 42
    assert tracker.diagnose(_diagnosis(43, "length_clip_all", 0.31)) is True  # as sure: it takes the place
    assert tracker.current.diagnosis.top.fault_type == "length_clip_all"
    assert replaces(_diagnosis(44, "lr_high", 0.1), _diagnosis(43, None))  # a named cause replaces an abstention
