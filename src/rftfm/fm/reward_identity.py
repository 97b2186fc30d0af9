"""The logged reward stops being the weighted sum of its reward functions' means: the rule of the detector's
reward-identity channel.

A TRL GRPOTrainer with several reward functions logs ``reward`` -- the mean over completions of the weighted
``nansum`` of the functions' scores -- beside each function's ``rewards/<name>/mean``, a ``nanmean`` over the
completions that function scored. While every function scores every completion, ``reward = sum_i w_i mean_i`` holds
to float rounding at every logged step (averaging over ``logging_steps`` keeps it: both sides are linear), with the
user's ``reward_weights`` ``w``. When a function starts returning ``None`` for some completions (a verifier that
times out and swallows it, an answer it cannot parse), ``nansum`` scores them 0 in ``reward`` while its own mean
skips them, and the identity breaks by ``w_i mean_i`` times the fraction it dropped.

The weights are not in the log, so the run's own first records fit them (least squares, written by hand: no library
watches a linear identity over a stream): the identity is trusted once :data:`WARMUP` records (and one more than the
number of functions) determine the weights -- full rank -- and every one of them held it within :data:`TOLERANCE`.
A run whose first records break it (functions that skip some completions by design, a fault from the first step)
never arms it; ``know_weights`` (the callback reads ``trainer.reward_weights``) arms it from the first record. An
armed record is judged in units of the tolerance, relative to the size of the reward and its parts. On the
benchmark's 1,200 runs (276 with two reward functions): no healthy or other faulty record breaks it; the 4
mid-run ``reward_none`` faults among them break it within 4 records (``python scripts/reward_identity_runs.py``).
Real TRL logs with two and three reward functions (``../shared/real-logs``) hold it to 1e-13 (relative).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
import polars as pl

from rftfm.fm import replay
from rftfm.fm.types import SignalEvidence
from rftfm.signals import REWARD_COMPONENT

#: Feature-dict key / frame column carrying a record's per-function reward means (sorted by function name), beside
#: the features (like the learning rate): a channel reads them, no model does.
PARTS = "reward_parts"
SIGNAL = "reward_mean"  # the evidence names the logged reward
WARMUP = 4  # records that must hold the identity before it is trusted (and at least one more than the functions)
MAX_WARMUP = 64  # records kept while the weights are not yet determined (a function constant so far)
TOLERANCE = 1e-3  # |reward - w . parts| relative to |reward| + sum |parts|: above float32 rounding and logs that
# print 4-5 significant digits; below what a function skipping 1 % of a 0.1-mean reward does
RANK_TOLERANCE = 1e-6  # smallest / largest singular value of the warm-up parts below which the weights are not
# determined (two functions that moved together so far)


def _function_keys(keys: Iterable[str], prefix: str = "") -> list[tuple[str, str]]:
    """(function name, key) of the keys that are reward functions' means, sorted by name: ``rewards/<name>/mean``
    (TRL >= 0.17) or, where a log has none of those, older TRL's ``rewards/<name>`` (beside ``/mean`` keys, a bare
    ``rewards/<name>`` is something else: a run's own total, say)."""
    found = [(m.group("name"), k) for k in keys if (m := REWARD_COMPONENT.match(k.removeprefix(prefix)))]
    means = [(name, k) for name, k in found if k.endswith("/mean")]
    return sorted(means or found)


@lru_cache(maxsize=256)
def _record_keys(candidates: tuple[str, ...]) -> tuple[str, ...]:
    """The function keys among a record's ``rewards/`` keys, in function-name order (a run logs the same keys at
    every step: matched once)."""
    return tuple(k for _, k in _function_keys(candidates))


def parts_of(metrics: Mapping[str, float | None]) -> tuple[float, ...] | None:
    """A record's per-function reward means (:func:`_function_keys`), sorted by function name; ``None`` when it
    logs none or any is missing / not finite."""
    keys = _record_keys(tuple(k for k in metrics if k.startswith("rewards/")))
    if not keys:
        return None
    values = tuple(float(v) if (v := metrics[k]) is not None else math.nan for k in keys)
    return values if all(math.isfinite(v) for v in values) else None


def _weighted(parts: Sequence[float], weights: Sequence[float]) -> float:
    return sum(p * w for p, w in zip(parts, weights))  # (plain floats: a handful of functions, one record at a time)


def _relative_gap(total: float, parts: Sequence[float], weights: Sequence[float]) -> float:
    scale = max(abs(total), sum(abs(p) for p in parts), 1e-12)
    return abs(total - _weighted(parts, weights)) / scale


@dataclass
class IdentityState:
    """One run's warm-up records (reward, parts), the fitted weights once armed, and since which step the identity
    has been broken (0: holding)."""

    totals: list[float] = field(default_factory=list)
    rows: list[tuple[float, ...]] = field(default_factory=list)
    weights: tuple[float, ...] | None = None
    disarmed: bool = False  # the run's own records broke it before it was trusted: never judged
    since: int = 0
    last: tuple[float, float] = (math.nan, math.nan)  # the last judged record's reward and w . parts

    def copy(self) -> "IdentityState":
        return IdentityState(list(self.totals), list(self.rows), self.weights, self.disarmed, self.since, self.last)

    def know_weights(self, weights: Mapping[str, float] | Sequence[float] | None) -> None:
        """The run's reward weights (by function name, or in the order of :func:`parts_of`: sorted names): armed at
        once; ``None``: fitted on the run's first records."""
        if weights is None:
            return
        values = [weights[k] for k in sorted(weights)] if isinstance(weights, Mapping) else list(weights)
        self.weights, self.disarmed, self.totals, self.rows = tuple(map(float, values)), False, [], []

    def advance(self, total: float | None, parts: Sequence[float] | None, step: int) -> float:
        """Take in one record; the identity's gap in units of :data:`TOLERANCE` where armed (0: not judged)."""
        if parts is None or total is None or not math.isfinite(total) or self.disarmed:
            return 0.0
        if any(p is None or not math.isfinite(p) for p in parts):  # a function's mean missing: not judged (as live)
            return 0.0
        if self.weights is not None:
            if len(parts) != len(self.weights):  # a reward function added or removed: the weights no longer apply
                self.disarmed, self.weights = True, None
                return 0.0
            self.last = (float(total), _weighted(parts, self.weights))
            units = _relative_gap(total, parts, self.weights) / TOLERANCE
            self.since = (self.since or step) if units > 1.0 else 0
            return units
        if self.rows and len(self.rows[0]) != len(parts):
            self.disarmed = True
            return 0.0
        self.totals.append(float(total))
        self.rows.append(tuple(map(float, parts)))
        self._fit()
        return 0.0

    def _fit(self) -> None:
        n, k = len(self.rows), len(self.rows[0])
        if n < max(WARMUP, k + 1):
            return
        a, b = np.array(self.rows), np.array(self.totals)
        singular = np.linalg.svd(a, compute_uv=False)
        if singular[-1] <= RANK_TOLERANCE * singular[0]:
            if n >= MAX_WARMUP:
                self.disarmed = True
            return
        weights = tuple(float(w) for w in np.linalg.lstsq(a, b, rcond=None)[0])
        if max(_relative_gap(t, row, weights) for t, row in zip(self.totals, self.rows)) > TOLERANCE:
            self.disarmed = True  # the run's own records do not hold it: its functions skip completions by design
        else:
            self.weights = weights
        self.totals, self.rows = [], []

    def evidence(self) -> SignalEvidence:
        """The broken identity as evidence on the logged reward (``expected``: the weighted sum of the parts)."""
        total, expected = self.last
        return SignalEvidence(
            signal=SIGNAL,
            direction="down" if total < expected else "up",
            value=total,
            expected=expected,
            since_step=self.since or None,
            reward_identity=True,
        )


def trainer_weights(trainer: Any) -> dict[str, float] | None:
    """A TRL trainer's reward weights by function name (``reward_func_names``, ``reward_weights``), or ``None`` where
    it has none, they do not pair up, or there is a single function (whose weight the log cannot tell from its mean's
    scale: fitted, which costs nothing with one function)."""
    names = getattr(trainer, "reward_func_names", None)
    weights = getattr(trainer, "reward_weights", None)
    if names is None or weights is None:
        return None
    values = [float(w) for w in (weights.tolist() if hasattr(weights, "tolist") else weights)]
    if len(values) != len(names) or len(values) < 2 or len(set(names)) != len(names):
        return None
    return dict(zip(map(str, names), values))


def describe(e: SignalEvidence) -> str:
    """The broken identity in words: ``train reward 0.12, its functions' weighted means 0.31 since step 101 (a
    reward function returns None for some completions)``."""
    since = f" since step {e.since_step}" if e.since_step is not None else ""
    return (
        f"train reward {e.value:.3g}, its functions' weighted means {e.expected:.3g}{since} "
        "(a reward function returns None for some completions)"
    )


def frame_parts(steps: pl.DataFrame) -> pl.Expr:
    """The :data:`PARTS` column of a steps frame: its per-function reward means (``extra.`` columns of the
    benchmark layout, or bare TRL keys), sorted by function name, as a list (null where the frame has none)."""
    names = _function_keys(steps.columns, prefix="extra.")
    if not names:
        return pl.lit(None, dtype=pl.List(pl.Float64)).alias(PARTS)
    return pl.concat_list([pl.col(c).cast(pl.Float64) for _, c in names]).alias(PARTS)


#: records back from the diagnosis step in which a broken identity still counts (it holds again at a record where the
#: skipping function's mean is 0: the gap is its mean times the share it skipped)
RECENT = 3


def run_evidence(
    features: pl.DataFrame, run_id: str, step: int, weights: Mapping[str, float] | None = None
) -> SignalEvidence | None:
    """The broken identity as evidence where one of ``run_id``'s last :data:`RECENT` records up to ``step`` broke it
    (``features``: :func:`~rftfm.fm.features.features_frame` rows; ``weights``: the run's reward weights by function
    name when known), else ``None``."""
    return reading(features, run_id, step, weights)[0]


def reading(
    features: pl.DataFrame, run_id: str, step: int, weights: Mapping[str, float] | None = None
) -> tuple[SignalEvidence | None, bool]:
    """One replay of ``run_id``'s records up to ``step``: :func:`run_evidence`'s evidence, and whether the identity
    is armed over two or more reward functions and held at every one of its last :data:`RECENT` judged records (at
    least one judged) -- a record whose reward function returned None for some completions while another scored them
    would have broken it (the module's docstring); with one function TRL (>= 1.16) leaves an unscored completion out
    of both sides, so holding says nothing there."""
    if PARTS not in features.columns:
        return None, False
    rows = features.filter((pl.col("run_id") == run_id) & pl.col("step").is_between(1, step)).sort("step")
    last = set(rows["step"].unique().sort()[-RECENT:].to_list())
    state, found, judged = _state(weights), None, []
    for s, total, parts in _rows(rows):
        units = state.advance(total, parts, s)
        if units > 1.0 and s in last:
            found = state.evidence()
        if state.weights is not None and parts is not None and total is not None:
            judged.append(units)
    armed = state.weights is not None and not state.disarmed and len(state.weights) >= 2
    return found, armed and bool(judged) and max(judged[-RECENT:]) <= 1.0


def _own_columns(parts: list[list[float | None] | None]) -> list[int]:
    """The positions of one run's own functions in its records' parts: those it ever logged (a frame of many runs has
    every run's functions as columns)."""
    logged = [p for p in parts if p is not None]
    return [k for k in range(len(logged[0])) if any(p[k] is not None for p in logged)] if logged else []


def functions_per_run(features: pl.DataFrame) -> dict[str, int]:
    """How many reward functions each run of a features frame logs (runs without any: absent)."""
    if PARTS not in features.columns:
        return {}
    frames = features.select("run_id", PARTS).drop_nulls().group_by(["run_id"])
    return {run_id: len(_own_columns(frame[PARTS].to_list())) for (run_id,), frame in frames}


def _own_parts(rows: list[tuple]) -> list[tuple[int, float | None, list[float] | None]]:
    """(step, reward, parts) of one run's records with only the run's own functions (:func:`_own_columns`), ``None``
    where a value is missing."""
    own = _own_columns([p[2] for p in rows])
    out = []
    for step, total, parts in rows:
        values = None if parts is None or not own else [parts[k] for k in own]
        clean = None if values is None or any(v is None or not math.isfinite(v) for v in values) else values
        out.append((step, None if total is None or not math.isfinite(total) else total, clean))
    return out


def _rows(frame: pl.DataFrame) -> list[tuple[int, float | None, list[float] | None]]:
    """(step, reward, parts) of one run's records in order (:func:`_own_parts`)."""
    return _own_parts(frame.select("step", SIGNAL, PARTS).rows())


def _state(weights: Mapping[str, float] | None) -> IdentityState:
    state = IdentityState()
    state.know_weights(weights)
    return state


def runs_units(
    features: pl.DataFrame, run_ids: Sequence[str], n_steps: int, weights: Mapping[str, float] | None = None
) -> np.ndarray:
    """(runs, n_steps) the channel's units of each run's records in step order, exactly as :meth:`IdentityState.advance`
    gives them live (0 where absent or not judged). A frame of many runs has every run's functions as columns: a run's
    own are those it ever logged, and a record missing one of them is not judged (as live)."""
    if PARTS not in features.columns:
        return np.zeros((len(run_ids), n_steps))
    return replay.runs_units(features, run_ids, n_steps, _rows, partial(_state, weights))
