"""Scale-free training dynamics: every signal judged against the run's own history.

:class:`DynamicsTracker` follows many runs (or one, live) record by record and turns each
record's raw metrics into features that mean the same thing in every configuration:

* each signal is put on a comparable scale (:mod:`rftfm.signals`): positive magnitudes on
  ``asinh(x / c)`` with ``c`` a small fraction of the run's own first non-zero magnitude (a
  log-ratio from there on, so a length that collapses 1,000-fold moves as far as one that grows
  1,000-fold; linear near zero, so a KL of exactly 0 is defined), fractions as they are, signed
  levels (reward, loss) as they are;
* a robust local-linear baseline (Holt smoothing whose innovations are clipped at
  ``huber`` noise units, so one outlier barely moves it) predicts the next value; the
  innovation in units of the run's own step-to-step noise is ``z``. Healthy trends -- a KL
  that grows as the policy leaves the reference, an entropy that declines, lengths that drift
  -- are followed by the baseline's trend and do not accumulate;
* the noise scale is learned from the run itself (mean absolute innovation over inliers),
  shrunk towards a prior (``prior_noise``: the typical noise of that signal across many
  configurations) while the run is young, so a jump at step 3 is judged before the run has
  taught its own noise;
* a signal in the user's units (reward, loss: no prior carries across configurations) is judged
  only once it has moved, and its noise is never taken below its resolution -- the smallest
  change it has made so far: a mean of 32 verifier rewards stuck at 0 has not become noiseless,
  and its first move of one completion (1/32) is one quantum, not twenty sigmas;
* a shift that persists ``adapt_after`` records is accepted as the run's new level (a change
  point): the fast baseline jumps to it and relearns its noise, so an alarm is an episode with
  an end, while the slow baseline and the CUSUM (capped) still show it for a while;
* a two-sided CUSUM of ``z`` accumulates a persistent shift; the deviation from a slow
  baseline and from the run's own first records (warm-up) measure a drift the fast baseline
  followed; where a level means the same everywhere (fractions), the level itself (a truncated
  ratio of 0.95).

Rollbacks and resumes: :meth:`snapshot` / :meth:`restore` copy the state, so a live monitor
can return to the state it had before a rolled-back step.

Written by hand: river's drift detectors (ADWIN, Page-Hinkley, KSWIN) follow one raw stream with
absolute thresholds; here every signal needs its own unit, a prior noise shared across
configurations and a trend-following baseline, over many runs at once for evaluation. The per-record update is
compiled (:mod:`rftfm.fm.dynamics_kernel`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from rftfm.fm.dynamics_kernel import advance
from rftfm.signals import Scale, has_absolute_level, scale

#: Features per signal (a NaN where a signal has no value of that kind).
PER_SIGNAL: tuple[str, ...] = ("z", "cusum_up", "cusum_down", "dev_slow", "trend", "change0", "level")
GLOBAL: tuple[str, ...] = ("log_records",)


@dataclass(frozen=True)
class TrackerConfig:
    alpha: float = 0.3  # level smoothing of the fast baseline
    beta: float = 0.2  # trend smoothing
    slow_alpha: float = 0.05  # the slow baseline (half-life ~14 records)
    huber: float = 3.0  # innovations clipped here (noise units) before they move the baseline
    noise_gamma: float = 0.1  # weight of a new inlier innovation in the noise estimate
    prior_weight: float = 4.0  # pseudo-records of the prior noise
    all_time_floor: float = 0.5  # the recent noise is never taken below this fraction of the run's all-time
    # noise (a reward that saturated at 1.0 for 20 steps has not become noiseless)
    magnitude_fraction: float = 0.01  # c of a log signal's asinh scale, as a fraction of its first magnitude
    prior_floor: float = 0.5  # a run's noise is never taken below this fraction of the prior (a quiet stretch
    # of a quantised signal -- a max length stuck at 3 tokens -- is not a run without noise)
    floor_log: float = 0.1  # noise floors: a 10 % change of a magnitude, 5 points of a fraction
    floor_rate: float = 0.05
    cusum_k: float = 0.5
    z_clip: float = 20.0
    warmup: int = 5  # records whose median is the run's reference level
    adapt_after: int = 4  # records in a row beyond ``huber`` on one side: the baseline accepts the new level
    cusum_cap: float = 25.0  # so an accepted change stops counting after ~2 cap / (1 + k) records
    # also the level of a fraction whose healthy level the task sets (``Signal.level_by_task``): no evidence of a
    # fault by itself (a hard task's healthy run sits at 90 % zero-variance groups), but once an alarm stands, a
    # fingerprint of which fault it is (every group tied: every reward zeroed). The diagnoser reads it, the
    # detector does not.
    task_levels: bool = False


def feature_names(signals: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{s}:{k}" for s in signals for k in PER_SIGNAL) + GLOBAL


def scales(signals: tuple[str, ...]) -> tuple[Scale, ...]:
    """Scale of each signal (:func:`rftfm.signals.scale`)."""
    return tuple(map(scale, signals))


def clip(x: np.ndarray | float, low: np.ndarray | float, high: np.ndarray | float) -> np.ndarray:
    """``np.clip`` for ``low <= high`` in two ufunc calls (the same values, NaN included; ``np.clip``'s dispatch
    costs more than its arithmetic on one run's record: used on every per-record path)."""
    return np.minimum(np.maximum(x, low), high)


#: Noise floor of signed levels (their unit is the user's): a signal that never moves still needs a finite z.
NOISE_FLOOR = {"linear": 1e-6}


@dataclass
class TrackerState:
    """State of R runs x F signals (arrays), copied by :meth:`DynamicsTracker.snapshot`.

    The tracker never writes into a state's arrays: every update binds new ones, so :meth:`frozen` -- a new state
    holding the same arrays -- keeps the values of the moment it was taken.
    """

    magnitude: np.ndarray  # (R, F) c of the asinh transform (NaN: not set yet)
    level: np.ndarray
    trend: np.ndarray
    slow: np.ndarray
    noise: np.ndarray  # mean absolute inlier innovation x 1.2533 (NaN: none yet)
    noise_n: np.ndarray  # inlier innovations seen
    noise_sum: np.ndarray  # their sum (the run's all-time noise, a floor under the recent one)
    previous: np.ndarray  # the last value seen (transformed)
    resolution: np.ndarray  # the smallest non-zero change between consecutive values so far (NaN: none yet)
    n: np.ndarray  # values seen
    cplus: np.ndarray
    cminus: np.ndarray
    cplus_since: np.ndarray  # record count at which the current CUSUM excursion started
    cminus_since: np.ndarray
    outside: np.ndarray  # signed count of records in a row beyond ``huber`` (+ above, - below)
    warm: np.ndarray  # (R, F, warmup) first values
    reference: np.ndarray  # median of the warm-up values (NaN until complete)
    records: np.ndarray  # (R,) records seen

    @classmethod
    def new(cls, runs: int, signals: int, warmup: int) -> "TrackerState":
        nan = np.full((runs, signals), np.nan)
        zero = np.zeros((runs, signals))
        return cls(
            nan.copy(),
            nan.copy(),
            zero.copy(),
            nan.copy(),
            nan.copy(),
            zero.copy(),
            zero.copy(),
            nan.copy(),
            nan.copy(),
            zero.copy(),
            zero.copy(),
            zero.copy(),
            zero.copy(),
            zero.copy(),
            zero.copy(),
            np.full((runs, signals, warmup), np.nan),
            nan.copy(),
            np.zeros(runs),
        )

    def copy(self) -> "TrackerState":
        return TrackerState(*(getattr(self, name).copy() for name in _STATE_FIELDS))

    def frozen(self) -> "TrackerState":
        """This state as it is now, without copying its arrays (see the class docstring)."""
        return TrackerState(*(getattr(self, name) for name in _STATE_FIELDS))


_STATE_FIELDS = tuple(f.name for f in fields(TrackerState))  # looked up once: a live run copies its state per record
_BLOCK_FIELDS = _STATE_FIELDS[:-3]  # the (R, F) ones: the compiled update writes them as one (15, R, F) block


@dataclass
class DynamicsTracker:
    """Streaming scale-free features for runs x signals; see the module docstring."""

    signals: tuple[str, ...]
    prior_noise: np.ndarray | None = None  # (F,) transformed units; NaN / None: no prior
    config: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        self.scale = scales(self.signals)
        self.is_log = np.array([s == "log" for s in self.scale])
        self.is_rate = np.array([s == "rate" for s in self.scale])
        self.is_absolute = np.array([has_absolute_level(s, self.config.task_levels) for s in self.signals])
        floors = {"log": self.config.floor_log, "rate": self.config.floor_rate, "linear": NOISE_FLOOR["linear"]}
        self.floor = np.array([floors[s] for s in self.scale])
        prior = np.full(len(self.signals), np.nan) if self.prior_noise is None else np.asarray(self.prior_noise, float)
        self.prior = np.where(np.isfinite(prior), np.maximum(prior, self.floor), np.nan)
        self.names = feature_names(self.signals)
        # fixed per tracker, read at every record: computed once
        self.has_prior = np.isfinite(self.prior)
        self.prior_floor = np.fmax(self.floor, self.config.prior_floor * self.prior)
        self.is_relative = self.is_rate | self.is_log

    def new_state(self, runs: int = 1) -> TrackerState:
        return TrackerState.new(runs, len(self.signals), self.config.warmup)

    def update(self, state: TrackerState, x: np.ndarray) -> np.ndarray:
        """Advance ``state`` by one record of raw values ``x`` (R, F) (NaN = missing); features (R, D).

        Per signal: the comparable scale (a log signal's ``c`` set at its first non-zero value; an exact 0 of a
        magnitude -- a reward sd of a batch whose groups all tied -- left out rather than read as a 100-fold fall);
        the noise scale in use (the run's own estimate shrunk towards the prior; a signal without a prior unknown
        until it has moved, never below its resolution); the innovation ``z``; the noise learnt from inliers only,
        and not while a shift builds up (a fault does not teach the run that it is normal); the Holt baseline moved
        by the clipped innovation, a shift that persists ``adapt_after`` records accepted as the new level; the
        capped CUSUM; the warm-up reference; the resolution. Compiled: :func:`rftfm.fm.dynamics_kernel.advance`.
        """
        cfg = self.config
        x = np.ascontiguousarray(x, dtype=float)
        new = np.empty((len(_BLOCK_FIELDS), *x.shape))
        warm, reference, records = state.warm.copy(), state.reference.copy(), state.records + 1.0
        out = np.empty((x.shape[0], x.shape[1] * len(PER_SIGNAL) + len(GLOBAL)))
        advance(
            x, *(getattr(state, name) for name in _STATE_FIELDS), new, warm, reference, records, out,
            self.is_log, self.is_relative, self.is_absolute, self.has_prior, self.prior, self.prior_floor,
            self.floor, cfg.alpha, cfg.beta, cfg.slow_alpha, cfg.huber, cfg.noise_gamma, cfg.prior_weight,
            cfg.all_time_floor, cfg.magnitude_fraction, cfg.cusum_k, cfg.z_clip, cfg.cusum_cap, cfg.warmup,
            float(cfg.adapt_after),
        )
        for name, value in zip(_BLOCK_FIELDS, new):  # a new array per field (see TrackerState)
            setattr(state, name, value)
        state.warm, state.reference, state.records = warm, reference, records
        return out

    def run_cube(self, cube: np.ndarray) -> np.ndarray:
        """Features (R, S, D) of a raw cube (R, S, F) of records in order (NaN rows past a run's end)."""
        return self.extend(self.new_state(cube.shape[0]), cube)

    def extend(self, state: TrackerState, cube: np.ndarray) -> np.ndarray:
        """:meth:`run_cube` from ``state`` (advanced in place): the features of records that follow those
        ``state`` has seen."""
        out = np.full((cube.shape[0], cube.shape[1], len(self.names)), np.nan)
        for s in range(cube.shape[1]):
            present = np.isfinite(cube[:, s]).any(axis=1)
            before = state.copy() if not present.all() else None
            out[:, s] = self.update(state, cube[:, s])
            if before is not None:  # a run already ended: its state (and record count) stays as it was
                for f in fields(state):
                    kept = getattr(state, f.name).copy()  # new arrays: see TrackerState
                    kept[~present] = getattr(before, f.name)[~present]
                    setattr(state, f.name, kept)
        return out

    @staticmethod
    def snapshot(state: TrackerState) -> TrackerState:
        return state.copy()

    def noise_of(self, cube: np.ndarray) -> np.ndarray:
        """(R, F) each run's own final noise estimate (transformed units), for fitting :attr:`prior_noise`."""
        state = self.new_state(cube.shape[0])
        for s in range(cube.shape[1]):
            self.update(state, cube[:, s])
        return np.where(state.noise_n >= 5, state.noise, np.nan)


def fit_prior_noise(
    signals: tuple[str, ...], normal_cube: np.ndarray, config: TrackerConfig | None = None
) -> np.ndarray:
    """(F,) prior noise: the median over normal runs of each signal's own noise (transformed units).

    Signed levels (reward, loss) are in the user's units: no prior carries across configurations (NaN).
    """
    tracker = DynamicsTracker(signals, None, config or TrackerConfig())
    own = tracker.noise_of(normal_cube)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        prior = np.nanmedian(own, axis=0) if len(own) else np.full(len(signals), np.nan)
    return np.where([s == "linear" for s in tracker.scale], np.nan, prior)
