"""A reward function whose scores were all 0 or 1 stops being so: the rule of the detector's binary-reward channel.

A verifier that scores each completion 0 or 1 (right or wrong: the usual RLVR reward) meets the Bhatia-Davis bound with
equality: ``n`` scores in {0, 1} with mean ``m`` have the (Bessel) standard deviation ``sd`` with ``sd**2 = m (1 - m)
n / (n - 1)``. TRL logs both for every reward function (``rewards/<name>/mean``, ``rewards/<name>/std``), over the
step's ``n`` completions, so ``q = sd**2 / (m (1 - m))`` is one number, ``n / (n - 1)``, at every record of such a run
-- whatever the task, model or mean -- to float rounding (healthy benchmark records: within 2.1e-7). Noise added to
the verifier's scores, scores scaled or offset, or completions it stopped scoring (``None``: TRL leaves them out of
the function's statistics, so ``n`` changes) move ``q`` off that number, or the mean out of [0, 1], at the first
record they touch.

The rule needs no fitting. A function is trusted once its first :data:`WARMUP` records with a mean strictly between
0 and 1 agree on ``q`` within :data:`TOLERANCE` and have at least two different means (equal means give equal ``q``
whatever the scores are); a function whose first such records disagree (scores that are not 0 / 1: partial credit, a
length penalty) never arms. A record is judged only when it follows the previous logged one by one step: a record
that averages several steps (``logging_steps > 1``) breaks the equality without any fault. Where the log has no
per-function statistics (a log of the total reward only), the logged reward's mean and sd are judged as one
function. On h31 and the wide samples w39, w40, w41 (1,560 runs; ``python scripts/binary_reward_runs.py --data
DIR`` for each): 331 of their 632 normal and control runs arm it and none breaks it, nor does any faulty run before its
onset; the faulty runs that break it are noisy, scaled and ``None``-returning rewards (32 runs), at a median of 0
records after onset. Written by hand: a rule over two numbers per function, no library watches for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import polars as pl

from rftfm.fm import replay
from rftfm.fm.reward_identity import PARTS, _function_keys, _own_columns
from rftfm.fm.types import SignalEvidence

#: Feature-dict key / frame column carrying a record's per-function reward standard deviations, in the order of
#: :data:`~rftfm.fm.reward_identity.PARTS` (sorted by function name): a channel reads them, no model does.
SPREADS = "reward_part_stds"
SIGNAL, MEAN = "reward_std", "reward_mean"  # the evidence names the logged reward sd
WARMUP = 5  # records a function must agree on q over before it is trusted
TOLERANCE = 1e-3  # |q / q_0 - 1|: far above float32 rounding (2e-7); below what a quarter of 32 completions left
# unscored does (q 32/31 -> 24/23: 1.1e-2) or noise of sd 0.03 on scores with mean 0.5 (3.6e-3)
EDGE = 1e-9  # a mean this close to 0 or 1 is 0 or 1 (every score equal: sd 0)
MAX_UNITS = 1e6


@lru_cache(maxsize=256)
def _spread_keys(candidates: tuple[str, ...]) -> tuple[str, ...]:
    """The sd key of each function among a record's ``rewards/`` keys, in function-name order (a run logs the same
    keys at every step: matched once)."""
    return tuple(f"rewards/{name}/std" for name, _ in _function_keys(candidates))


def spreads_of(metrics: Mapping[str, float | None]) -> tuple[float, ...] | None:
    """A record's per-function reward sds (``rewards/<name>/std``) in the order of
    :func:`~rftfm.fm.reward_identity.parts_of`; ``None`` when it logs no function, or any sd is missing / not finite."""
    keys = _spread_keys(tuple(k for k in metrics if k.startswith("rewards/")))
    if not keys:
        return None
    values = tuple(float(v) if (v := metrics.get(k)) is not None else math.nan for k in keys)
    return values if all(math.isfinite(v) for v in values) else None


def frame_spreads(steps: pl.DataFrame) -> pl.Expr:
    """The :data:`SPREADS` column of a steps frame (``extra.`` columns of the benchmark layout, or bare TRL keys), in
    the order of :func:`~rftfm.fm.reward_identity.frame_parts`; null where the frame has no sd for some function."""
    names = _function_keys(steps.columns, prefix="extra.")
    columns = []
    for name, key in names:
        prefix = "extra." if key.startswith("extra.") else ""
        column = f"{prefix}rewards/{name}/std"
        if column not in steps.columns:
            return pl.lit(None, dtype=pl.List(pl.Float64)).alias(SPREADS)
        columns.append(pl.col(column).cast(pl.Float64))
    if not columns:
        return pl.lit(None, dtype=pl.List(pl.Float64)).alias(SPREADS)
    return pl.concat_list(columns).alias(SPREADS)


@dataclass
class FunctionState:
    """One reward function's warm-up ``q`` values and means, its ``q`` once armed, and the last judged record."""

    warm: list[float] = field(default_factory=list)
    means: list[float] = field(default_factory=list)
    q: float | None = None
    disarmed: bool = False
    since: int = 0
    last: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # (sd, the sd a 0 / 1 score would have, mean)

    def copy(self) -> "FunctionState":
        return FunctionState(list(self.warm), list(self.means), self.q, self.disarmed, self.since, self.last)

    def advance(self, mean: float, sd: float, step: int) -> float:
        """Take in one judged record; its gap in units of :data:`TOLERANCE` where armed (0: not judged)."""
        if self.disarmed:
            return 0.0
        if self.q is None:
            self._warm_up(mean, sd)
            return 0.0
        if mean < -EDGE or mean > 1.0 + EDGE:  # scores of 0 or 1 cannot average outside [0, 1]
            gap, expected = max(-mean, mean - 1.0) / TOLERANCE, math.nan
        elif min(mean, 1.0 - mean) <= EDGE:  # every score 0 (or 1): no spread
            gap, expected = sd / TOLERANCE, 0.0
        else:
            expected = math.sqrt(self.q * mean * (1.0 - mean))
            gap = abs(sd * sd / (mean * (1.0 - mean)) / self.q - 1.0) / TOLERANCE
        units = min(gap, MAX_UNITS)
        self.last = (sd, expected, mean)
        self.since = (self.since or step) if units > 1.0 else 0
        return units

    def _warm_up(self, mean: float, sd: float) -> None:
        if mean < -EDGE or mean > 1.0 + EDGE:
            self.disarmed = True  # not a 0 / 1 score
            return
        if min(mean, 1.0 - mean) <= EDGE:
            return  # every score equal: says nothing of the spread
        self.warm.append(sd * sd / (mean * (1.0 - mean)))
        self.means.append(mean)
        if len(self.warm) < WARMUP:
            return
        low, high = min(self.warm), max(self.warm)
        agree = low > 0 and high / low - 1.0 <= TOLERANCE and max(self.means) - min(self.means) > EDGE
        if agree:
            self.q = float(np.median(self.warm))
        else:
            self.disarmed = True  # scores that are not 0 / 1 (partial credit, a penalty), or one n each record
        self.warm, self.means = [], []


@dataclass
class BinaryState:
    """One run's reward functions (:class:`FunctionState`, in :data:`SPREADS` order), the last logged step, and which
    function broke the rule at the last judged record."""

    functions: list[FunctionState] = field(default_factory=list)
    previous: int | None = None
    worst: int = -1
    per_function: bool | None = None  # judged per function or on the logged reward (set by the first judged record)

    def copy(self) -> "BinaryState":
        return BinaryState([f.copy() for f in self.functions], self.previous, self.worst, self.per_function)

    def advance(
        self,
        parts: Sequence[float | None] | None,
        spreads: Sequence[float | None] | None,
        mean: float | None,
        sd: float | None,
        step: int,
    ) -> float:
        """Take in one record (its functions' means and sds, else the logged reward's mean and sd); the largest gap
        of its functions in units of :data:`TOLERANCE` (0: not judged)."""
        consecutive = self.previous is not None and step == self.previous + 1
        self.previous = step
        pairs = _pairs(parts, spreads, mean, sd)
        if not consecutive or pairs is None:
            return 0.0
        if self.per_function is None:
            self.per_function = parts is not None
        elif self.per_function != (parts is not None):  # a record without its functions' keys: not the same scores
            return 0.0
        if not self.functions:
            self.functions = [FunctionState() for _ in pairs]
        elif len(self.functions) != len(pairs):  # a reward function added or removed: judged no more
            self.functions = [FunctionState(disarmed=True) for _ in pairs]
            return 0.0
        units = [f.advance(m, s, step) for f, (m, s) in zip(self.functions, pairs)]
        self.worst = max(range(len(units)), key=units.__getitem__)  # (a handful of plain floats: no numpy call)
        return units[self.worst]

    def evidence(self) -> SignalEvidence:
        """The broken rule as evidence on the reward sd (``expected``: the sd scores of 0 or 1 with the function's mean
        would have; None where its mean left [0, 1])."""
        function = self.functions[self.worst]
        sd, expected, mean = function.last
        return SignalEvidence(
            signal=SIGNAL,
            direction="down" if math.isfinite(expected) and sd < expected else "up",
            value=sd,
            expected=expected if math.isfinite(expected) else None,
            since_step=function.since or None,
            binary_mean=mean,
        )


def _pairs(
    parts: Sequence[float | None] | None, spreads: Sequence[float | None] | None, mean: float | None, sd: float | None
) -> list[tuple[float, float]] | None:
    """(mean, sd) of each function, or of the logged reward where the record has no per-function means; None where a
    value is missing (not judged)."""
    if parts is not None:
        if spreads is None or len(spreads) != len(parts):
            return None
        pairs = list(zip(parts, spreads))
    else:
        pairs = [(mean, sd)]
    if any(m is None or s is None or not (math.isfinite(m) and math.isfinite(s)) for m, s in pairs):
        return None
    return [(float(m), float(s)) for m, s in pairs]  # type: ignore[arg-type]


def describe(e: SignalEvidence) -> str:
    """The broken rule in words: ``reward sd 1.07 where scores of 0 or 1 with mean 0.54 have sd 0.507 since step 7
    (the reward is no longer 0 or 1: noise, a scale, or completions left unscored)``."""
    since = f" since step {e.since_step}" if e.since_step is not None else ""
    mean = e.binary_mean
    if e.expected is None:
        what = f"mean reward {mean:.3g} outside [0, 1], where its scores were 0 or 1"
    else:
        what = f"reward sd {e.value:.3g} where scores of 0 or 1 with mean {mean:.3g} have sd {e.expected:.3g}"
    return f"{what}{since} (the reward is no longer 0 or 1: noise, a scale, or completions left unscored)"


def _rows(frame: pl.DataFrame) -> list[tuple[int, list[float] | None, list[float] | None, float | None, float | None]]:
    """(step, parts, sds, reward mean, reward sd) of one run's records, with only the run's own functions (a frame of
    many runs has every run's functions as columns)."""
    has = PARTS in frame.columns and SPREADS in frame.columns
    rows = frame.select("step", PARTS, SPREADS, MEAN, SIGNAL).rows() if has else [
        (s, None, None, m, d) for s, m, d in frame.select("step", MEAN, SIGNAL).rows()
    ]
    own = _own_columns([r[1] for r in rows]) if has else []
    out = []
    for step, parts, spreads, mean, sd in rows:
        if own and parts is not None:
            parts, spreads = [parts[k] for k in own], None if spreads is None else [spreads[k] for k in own]
        elif not own:
            parts = spreads = None
        out.append((int(step), parts, spreads, mean, sd))
    return out


def runs_units(features: pl.DataFrame, run_ids: Sequence[str], n_steps: int) -> np.ndarray:
    """(runs, n_steps) the channel's units of each run's records in step order, exactly as :meth:`BinaryState.advance`
    gives them live (0 where absent or not judged)."""
    if MEAN not in features.columns or SIGNAL not in features.columns:
        return np.zeros((len(run_ids), n_steps))
    return replay.runs_units(features, run_ids, n_steps, _rows, BinaryState)


#: records back from the diagnosis step in which a broken rule still counts
RECENT = 3


def run_evidence(features: pl.DataFrame, run_id: str, step: int) -> SignalEvidence | None:
    """The broken rule as evidence where one of ``run_id``'s last :data:`RECENT` records up to ``step`` broke it
    (``features``: :func:`~rftfm.fm.features.features_frame` rows), else ``None``."""
    if MEAN not in features.columns or SIGNAL not in features.columns:
        return None
    return replay.recent_evidence(features, run_id, step, _rows, BinaryState, RECENT)
