"""A length limit that clips every completion leaves the policy no gradient; one that is merely too short leaves one:
the diagnoser reads which at the diagnosed record (:func:`rftfm.fm.diagnose.gradient_now`) and ranks the two near
twins by it, half the mass on top of the model's, never certain (:meth:`rftfm.fm.diagnose.Diagnoser.apply_gradient`)."""

from __future__ import annotations

import math

import numpy as np

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.diagnose import Diagnoser, Seen, gradient_now

GRAD, TRUNC = CUBE_SIGNALS.index("grad_norm"), CUBE_SIGNALS.index("truncated_ratio")


def _records(grad: list[float], truncated: list[float]) -> tuple[np.ndarray, np.ndarray]:
    raw = np.full((len(grad) + 1, len(CUBE_SIGNALS)), np.nan)
    raw[: len(grad), GRAD], raw[: len(grad), TRUNC] = grad, truncated
    steps = np.zeros(len(grad) + 1, dtype=int)
    steps[: len(grad)] = np.arange(1, len(grad) + 1)  # the last slot absent (a cube's padding)
    return raw, steps


def test_the_registry_names_the_length_limit_that_clips_everything_as_the_one_that_stops_the_gradient() -> None:
    assert [t for t, f in FAULT_TYPES.items() if f.stops_gradient] == ["length_clip_all"]
    assert sorted(t for t, f in FAULT_TYPES.items() if f.length_limited) == ["length_clip_all", "length_truncation"]


def test_the_record_says_whether_its_gradient_flowed_against_the_runs_own_scale() -> None:
    assert gradient_now(*_records([1.0, 1.2, 0.0], [0.1, 0.2, 1.0])) == (False, True)
    assert gradient_now(*_records([1e-3, 1e-3, 2e-10], [0.1, 0.2, 0.5])) == (False, False)  # 1e-6 of its median
    assert gradient_now(*_records([1e-3, 1e-3, 5e-6], [0.1, 0.2, 0.995])) == (True, True)  # small, not gone
    assert gradient_now(*_records([0.0], [1.0])) == (False, True)  # nothing before: exactly 0
    assert gradient_now(*_records([1.0, math.nan], [0.1, math.nan])) == (None, False)  # not logged
    assert gradient_now(np.zeros((0, len(CUBE_SIGNALS))), np.zeros(0, dtype=int)) == (None, False)


def test_a_gone_or_flowing_gradient_ranks_the_twin_that_fits_first_short_of_certainty() -> None:
    diagnoser = Diagnoser.load_default()
    classes = diagnoser.classes
    truncation, clip_all = classes.index("length_truncation"), classes.index("length_clip_all")
    prob = np.full((4, len(classes)), 1e-4)
    prob[:2, truncation], prob[:2, clip_all] = 0.6, 0.4  # the model leans to the limit that leaves a gradient
    prob[2:, truncation], prob[2:, clip_all] = 0.3, 0.7  # ... or to the one that clips everything
    prob /= prob.sum(1, keepdims=True)
    base = Seen([], 0.0, None, [], [], False, False, False)
    gone = Seen(**{**base.__dict__, "gradient": False, "clipped_all": True})
    flows = Seen(**{**base.__dict__, "gradient": True, "clipped_all": True})
    unknown = np.array([False, False, True, True])
    out, after = diagnoser.apply_seen(prob, unknown, [base, gone, flows, base])
    np.testing.assert_allclose(out[[0, 3]], prob[[0, 3]])  # not read: as the model said
    assert out[1].argmax() == clip_all and 0.5 < out[1, clip_all] < 1.0 and not after[1]
    assert out[2].argmax() == truncation and 0.5 < out[2, truncation] < 1.0 and after[2]  # keeps its abstention
    others = [i for i in range(len(classes)) if i not in (truncation, clip_all)]
    np.testing.assert_allclose(out[2, others], prob[2, others])  # a flowing gradient moves mass between the twins
    assert abs(out[2].sum() - 1.0) < 1e-12
    # a gradient gone where completions were not all clipped is no sign of a limit that clips them all
    partial = Seen(**{**base.__dict__, "gradient": False, "clipped_all": False})
    out, _ = diagnoser.apply_seen(prob[:1], np.zeros(1, dtype=bool), [partial])
    np.testing.assert_allclose(out, prob[:1])
