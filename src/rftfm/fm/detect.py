"""RFT-FM anomaly detection on a run it has never seen: no normal runs of the user's configuration needed.

How it decides, record by record:

1. :class:`~rftfm.fm.dynamics.DynamicsTracker` turns the record's signals (the shared features of
   :mod:`rftfm.fm.features` plus the derived ones of :mod:`rftfm.fm.cube`) into scale-free
   features: each signal against the run's own baseline, in units of the run's own noise (with a
   prior noise learned across configurations while the run is young), its CUSUM, its drift from
   the run's warm-up, and the level of the signals whose level means the same everywhere
   (fractions);
2. a gradient-boosted classifier (LightGBM) maps them to the probability that a fault is acting.
   It is the prior of what healthy RFT dynamics look like: fitted on many configurations of the
   benchmark (faulty runs after onset against normal runs, control runs and pre-onset steps),
   with whole signals masked at random so that a log lacking some metric is judged like one
   that has it. One model per input *tier*: (a) step metrics as frameworks log them, (b) plus
   per-trajectory aggregates, (c) plus a held-out accuracy, (bc) both; a live run uses the
   richest tier its log has shown;
3. beside it, a *surprise* channel that needs no fault to have been seen before: the mean of the
   :data:`SURPRISE_TOP` largest innovations of the record, each in units of the innovation that
   healthy records of that signal exceed once in a hundred (a collapse moves several signals at
   once; an isolated spike of the k3 KL estimator moves one); a move in a signal's benign direction
   (a held-out accuracy rising) is not counted (:func:`counted_range`). It reads the step metrics a framework logs
   at every record, in every tier, and a held-out accuracy's fall once the run's warm-up of it is complete
   (:data:`SURPRISE_AFTER_WARMUP`; ``DetectorConfig.surprise_reads``): the trajectory aggregates reach the detector
   only through the learned channel (docs/detection.md, stops 58 and 59);
4. an *invariant* channel that needs no fitting at all: the advantage invariants of group-relative estimators
   (:func:`~rftfm.fm.features.advantage_consistency`) are 0 in a healthy run of any configuration up to float
   rounding, so once the run has held one :data:`~rftfm.fm.invariants.INVARIANT_WARMUP` times, a record past its
   :data:`~rftfm.fm.invariants.INVARIANT_LIMITS` alarms whatever the other two channels say (in any tier:
   a trainer can hand the invariants over without trajectory records, :mod:`rftfm.integrations.trl_advantages`);
5. a *schedule* channel, fitting-free too: the logged learning rate (never a feature: it is configuration) alarms
   when it jumps in one record by more than any warm-up or decay can (:mod:`rftfm.fm.schedule`), the signature
   of a configuration pushed mid-run; a change the caller made itself is announced
   (:meth:`Detector.expect_learning_rate_change`) and not judged; and, where the caller knows the run trains
   on-policy (:meth:`Detector.know_on_policy`), any clip ratio above 0 alarms (:mod:`rftfm.fm.on_policy`);
6. a *rate-shift* channel: a failure rate that only a fault raises by a step (the tool failure rate TRL logs for a
   trainer with tools) alarms when the rate pooled over the last records exceeds the rate pooled over the records
   before by more than healthy rates step up (:mod:`rftfm.fm.rate_shift`; its threshold is calibrated as below, over
   the healthy records that have it: normal runs' and faulty runs' before onset);
7. a *level-shift* channel: a step metric whose mean over its last few values leaves the mean of the values before
   by more than its own spread and more than healthy runs' step metrics ever move (:mod:`rftfm.fm.level_shift`; each
   signal's limits and the channel's threshold calibrated on healthy records, the threshold on configurations the
   limits were set without);
8. a *loss-penalty* channel: the logged loss per nat of entropy staying above its level before at every one of the
   last few records, by more than its own spread and more than healthy runs' losses rise -- a KL or entropy
   coefficient pushed mid-run, a penalty the policy term cannot make (:mod:`rftfm.fm.loss_penalty`; its threshold
   calibrated like the rate shift's, never below :data:`~rftfm.fm.loss_penalty.MIN_THRESHOLD`);
9. a *loss-scale* channel: the logged loss's magnitude over its last few records against its scale before -- advantages
   that stopped summing to 0 in their groups (a sign flipped, a normalisation that no longer centres them) or a
   penalty pushed in (:mod:`rftfm.fm.loss_scale`; calibrated like the rate shift, never below
   :data:`~rftfm.fm.loss_scale.MIN_THRESHOLD`);
10. a *non-finite* channel, fitting-free: a loss, grad norm, KL or entropy the run logged finite that goes missing
   from two records with a reward in a row -- what a NaN or inf becomes in a parsed log -- alarms
   (:mod:`rftfm.fm.non_finite`); and four reward rules, fitting-free too: the logged reward leaving its functions'
   weighted means (:mod:`rftfm.fm.reward_identity`), a reward function whose scores were all 0 or 1 no longer
   being so (:mod:`rftfm.fm.binary_reward`), a batch losing completions to no function scoring them
   (:mod:`rftfm.fm.unscored`) and identical completions of one prompt scored differently
   (:mod:`rftfm.fm.repeat_rewards`), these two where per-completion records or the trainer say so; and a
   *KL-coefficient* rule,
   fitting-free: the loss per unit of KL, which is the KL coefficient where a run's loss is its KL penalty, moving
   e-fold or more and holding its new value over the last few records, or, where the trainer's configured
   coefficient is known (:meth:`Detector.know_kl_coefficient`), sitting e-fold below it
   (:mod:`rftfm.fm.kl_coefficient`);
11. each learned or surprise channel's threshold is the score that half of ``false_alarm_target`` of normal and control
   runs exceed at any record (the learned channel's score: its probability's log-odds, exponentially
   weighted over the run's records, since a fault persists where a healthy run's odd record does
   not) -- the learned one on out-of-fold scores (folds hold out whole configurations) -- with an
   extrapolated tail (:func:`~rftfm.fm.cube.tail_threshold`);
12. every channel with a calibrated threshold (learned, surprise, rate shift, level shift, loss penalty, loss scale)
   is judged on its statistic confirmed over ``consecutive`` (two) records in a row -- its smallest value over the
   run's last two records -- and calibrated on that same confirmed statistic (:mod:`rftfm.fm.confirm`): a healthy
   run of a configuration never seen crosses a threshold for one record, a fault persists. The fitting-free rules
   alarm at once. A record's score is the largest channel score over its threshold: an alarm above 1.

:meth:`Detector.observe` returns an :class:`Alarm` at every record whose score exceeds 1 (the
watcher groups them into episodes). A step number that goes back (a rollback, a
resume) restores the tracker's state from before that step. The per-configuration detector of
:mod:`rftfm.fm.profile_detect` is the option for a user with normal runs of their own setup;
:class:`CombinedDetector` alarms when either does.

Saved as JSON (configuration, prior noise, LightGBM models as text): no pickle.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any, Sequence

import lightgbm as lgb
import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from rftfm.fm import (
    binary_reward,
    confirm,
    invariants,
    kl_coefficient,
    level_shift,
    loss_penalty,
    loss_scale,
    non_finite,
    on_policy,
    rate_shift,
    repeat_rewards,
    reward_identity,
    schedule,
    unscored,
)
from rftfm.fm.cube import (
    CUBE_SIGNALS,
    EVAL_INDEX,
    FLAT_INDEX,
    FlatStreak,
    record_row,
    runs_cube,
    runs_schedule,
    tail_threshold,
)
from rftfm.fm.dynamics import (
    GLOBAL,
    PER_SIGNAL,
    DynamicsTracker,
    TrackerConfig,
    TrackerState,
    clip,
    fit_prior_noise,
)
from rftfm.fm.fast_predict import SingleRowPredictor
from rftfm.fm.features import FEATURES, INVARIANT_FEATURES, SCHEDULE, step_features
from rftfm.fm.invariants import INVARIANT_LIMITS
from rftfm.fm.live_kernels import surprise_one
from rftfm.fm.types import Alarm, SignalEvidence
from rftfm.records import StepRecord, TrajectoryRecord
from rftfm.signals import SIGNALS, depends_on_steps_per_batch, label

FORMAT = "rftfm-zero-shot-detector"
VERSION = 3  # 3: the level-shift channel's limits
DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "detector.json"
NORMAL_KINDS = ("normal", "control")
#: the channels with a threshold calibrated on healthy records (confirmed over records in a row, rftfm.fm.confirm)
CALIBRATED = ("learned", "surprise", "rate_shift", "level_shift", "loss_penalty", "loss_scale")
#: the fitting-free statistics calibrated on healthy records, and the least threshold each keeps
LEAST_THRESHOLDS = {
    "rate_shift": -math.inf,
    "loss_penalty": loss_penalty.MIN_THRESHOLD,
    "loss_scale": loss_scale.MIN_THRESHOLD,
}

_STEP_ONLY = tuple(s for s in CUBE_SIGNALS if s in SIGNALS and SIGNALS[s].source == "step" and s != "eval_accuracy")
_TRAJECTORY = tuple(s for s in CUBE_SIGNALS if s in SIGNALS and SIGNALS[s].source == "trajectory")
#: A record has trajectories when it carries one of these: the invariants alone can come from a trainer's own log
#: (``StepRecord.extra``) in a run without trajectory records, which stays in tier a with the invariant channel on.
_TRAJECTORY_RECORDS = tuple(s for s in _TRAJECTORY if s not in INVARIANT_FEATURES)
_EVAL = ("eval_accuracy", "reward_minus_eval", "eval_unchanged_steps")
#: Signals each input tier sees (the rest of the cube is masked).
TIERS: dict[str, tuple[str, ...]] = {
    "a": _STEP_ONLY,
    "b": _STEP_ONLY + _TRAJECTORY,
    "c": _STEP_ONLY + _EVAL,
    "bc": _STEP_ONLY + _TRAJECTORY + _EVAL,
}
#: Per tier, the cube's signals it lacks (looked up once: a live run masks every record).
HIDDEN: dict[str, np.ndarray] = {tier: np.array([s not in kept for s in CUBE_SIGNALS]) for tier, kept in TIERS.items()}
MAX_EVIDENCE = 5
#: The record from which every fitting-free channel that compares a window of records with the run's earlier ones
#: (level shift, loss penalty, loss scale) judges: before it only the learned, surprise, invariant and schedule
#: channels do (at TRL's default logging, a record every 10 steps, that is step 120).
WINDOWED_FROM_RECORD = max(m.WINDOW + m.MIN_BASELINE for m in (level_shift, loss_penalty, loss_scale))
SURPRISE_TOP = 3
SURPRISE_READS = ("step+eval", "step", "tier")  # :attr:`DetectorConfig.surprise_reads`
#: Signals the surprise channel reads (``surprise_reads="step+eval"``) only once the run's warm-up of that signal is
#: complete (:attr:`~rftfm.fm.dynamics.TrackerConfig.warmup` values: its ``change0`` feature is defined): a held-out
#: accuracy measured on a small set every few records moved it in healthy runs at their first records (stop 57),
#: while a policy pushed off course mid-run shows first as its fall (an entropy bonus at TRL's logging: stop 59).
SURPRISE_AFTER_WARMUP = ("eval_accuracy",)
#: Signals left out of the surprise channel: noisy by nature in healthy runs (the registry's ``noisy``), and the
#: advantage invariants, which only the invariant channel reads (below).
UNSURPRISING = tuple(s for s in CUBE_SIGNALS if s in SIGNALS and SIGNALS[s].noisy) + tuple(INVARIANT_FEATURES)
#: Signals the learned channel does not read: the benchmark's healthy runs get one optimiser step per batch, so
#: their clip ratio is exactly 0 and a model would learn "any clip ratio is a fault" -- false for verl's PPO
#: mini-batches or ``num_iterations > 1``. The surprise channel still reads them. Nor the advantage invariants:
#: every benchmark run uses a group-relative estimator, so a model would learn "any residual is a fault" -- false
#: for PPO's or REINFORCE++'s advantages; the invariant channel reads them once the run has held them.
UNLEARNED = tuple(s for s in CUBE_SIGNALS if depends_on_steps_per_batch(s)) + tuple(INVARIANT_FEATURES)
SNAPSHOTS = 64  # tracker states kept for rollbacks (steps back)

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.6,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 1,  # OpenMP threads spin on a busy 2-core machine: one thread is faster there
    "seed": 11,
    "deterministic": True,
}


@dataclass
class DetectorConfig:
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    false_alarm_target: float = 0.02  # fraction of normal / control runs allowed to alarm (out of fold)
    tail_fraction: float = 0.2
    num_rounds: int = 250
    persistence: float = 0.5  # weight of the newest record in the learned channel's running log-odds (1: none):
    # a fault persists after its onset, a healthy run's odd record does not
    mask_probability: float = 0.2  # each signal of a training copy is hidden with this probability
    masked_copies: int = 1
    folds: int = 5
    seed: int = 0
    level_quantile: float = 0.99  # each level-shift signal's limit: this quantile of healthy runs' largest move
    consecutive: int = 2  # records in a row a calibrated channel's statistic must be past its threshold to alarm
    # (:mod:`rftfm.fm.confirm`; 1: each record alone, as artifacts saved before it was a setting)
    surprise_reads: str = "step+eval"  # the surprise channel's signals (:func:`surprise_signals`): "step+eval", the
    # step metrics of tier a whatever the tier, and a held-out accuracy's falls once its warm-up is complete; "step",
    # the step metrics alone (stop 58); "tier", every signal of the tier (artifacts saved before it was a setting)

    def __post_init__(self) -> None:
        surprise_signals("a", self.surprise_reads)  # an unknown setting fails here (at load), not at the first record


def surprise_signals(tier: str, reads: str = "step+eval") -> tuple[str, ...]:
    """The signals the surprise channel reads in ``tier``, less :data:`UNSURPRISING`: the step metrics
    (``reads="step"``), those and the tier's :data:`SURPRISE_AFTER_WARMUP` (``"step+eval"``; read once the run's
    warm-up of each is complete, :meth:`Detector._surprise`), or all the tier's (``"tier"``)."""
    if reads not in SURPRISE_READS:
        raise ValueError(f"surprise_reads must be one of {SURPRISE_READS}, not {reads!r}")
    gated = SURPRISE_AFTER_WARMUP if reads == "step+eval" else ()
    kept = TIERS[tier] if reads == "tier" else TIERS["a"] + tuple(s for s in gated if s in TIERS[tier])
    return tuple(s for s in kept if s not in UNSURPRISING)


def learned_signals(tier: str) -> tuple[str, ...]:
    """The tier's signals the learned channel reads."""
    return tuple(s for s in TIERS[tier] if s not in UNLEARNED)


def tier_of(has_trajectories: bool, has_eval: bool) -> str:
    return "bc" if has_trajectories and has_eval else "b" if has_trajectories else "c" if has_eval else "a"


def _signal_columns(names: Sequence[str], signals: Sequence[str]) -> np.ndarray:
    """Indices of the tracker features (``names``) that belong to ``signals`` (plus the global ones)."""
    keep = set(signals)
    return np.array([i for i, n in enumerate(names) if n in GLOBAL or n.split(":")[0] in keep])


@dataclass
class _Live:
    """Streaming state of one run."""

    run_id: str
    state: TrackerState
    flat: FlatStreak
    last_step: int = 0
    has_trajectories: bool = False
    has_eval: bool = False
    snapshots: deque = field(default_factory=lambda: deque(maxlen=SNAPSHOTS))
    steps: list[int] = field(default_factory=list)  # step number of each record the tracker has taken in
    # each record's calibrated channels' statistics, before confirmation (the first: the learned channel's running
    # log-odds; :data:`CALIBRATED` names them)
    calibrated: list[tuple[float, ...]] = field(default_factory=list)
    invariant_held: np.ndarray = field(default_factory=lambda: np.zeros(len(INVARIANT_LIMITS)))  # records holding each
    schedule: schedule.ScheduleState = field(default_factory=schedule.ScheduleState)
    shift: rate_shift.ShiftState = field(default_factory=rate_shift.ShiftState)
    level: level_shift.LevelState = field(default_factory=level_shift.LevelState)
    lost: non_finite.LostState = field(default_factory=non_finite.LostState)
    identity: reward_identity.IdentityState = field(default_factory=reward_identity.IdentityState)
    binary: binary_reward.BinaryState = field(default_factory=binary_reward.BinaryState)
    penalty: loss_penalty.PenaltyState = field(default_factory=loss_penalty.PenaltyState)
    scale: loss_scale.ScaleState = field(default_factory=loss_scale.ScaleState)
    coefficient: kl_coefficient.CoefficientState = field(default_factory=kl_coefficient.CoefficientState)
    unscored: unscored.UnscoredState = field(default_factory=unscored.UnscoredState)
    repeats: repeat_rewards.RepeatState = field(default_factory=repeat_rewards.RepeatState)

    def snapshot(self, step: int, state: TrackerState) -> tuple:
        """What a rollback to ``step`` restores (:meth:`Detector._rewind`), with the tracker's ``state`` before it."""
        flat = FlatStreak(self.flat.previous.copy(), self.flat.streak.copy())
        return (
            step,
            state,
            flat,
            self.has_trajectories,
            self.has_eval,
            self.invariant_held.copy(),
            self.schedule.copy(),
            self.shift.copy(),
            self.level.copy(),
            self.lost.copy(),
            self.identity.copy(),
            self.binary.copy(),
            self.penalty.copy(),
            self.scale.copy(),
            self.coefficient.copy(),
            self.unscored.copy(),
            self.repeats.copy(),
        )


@dataclass
class _Pending:
    """One record the tracker has taken in, waiting for its learned score."""

    step: int
    tier: str
    row: np.ndarray  # (1, D_tier) the tier's model input
    features: np.ndarray  # (D,) every tracker feature
    raw: np.ndarray  # (F,) the record's signals
    before: TrackerState  # the tracker before this record (the evidence's baseline)
    since_plus: np.ndarray  # (F,) record at which each upward / downward CUSUM excursion began
    since_minus: np.ndarray
    invariant: np.ndarray  # (len(INVARIANT_LIMITS),) each armed invariant in units of its limit (0: not armed)
    jump: float  # the learning rate's signed jump units (:mod:`rftfm.fm.schedule`)
    raw_lr: float  # the record's learning rate (NaN: none logged)
    lr_before: float  # the learning rate of the record before (NaN: none)
    step_before: int | None  # that record's step
    clipped: float  # the clip ratio in units of on_policy.LIMIT where the run is known on-policy (else 0)
    shift_now: np.ndarray  # (K,) each rate-shift signal pooled over its window and over the records before it
    shift_before: np.ndarray  # (:mod:`rate_shift`; NaN: not judged)
    level: tuple[np.ndarray, np.ndarray, np.ndarray]  # each level-shift signal's statistic, window mean, reference
    lost: list[SignalEvidence]  # the signals the record has lost (:mod:`non_finite`), as evidence
    identity: float  # the reward identity's gap in units of its tolerance (:mod:`reward_identity`; 0: not judged)
    identity_evidence: list[SignalEvidence]  # ... and, where it is broken, as evidence (read when the record was)
    binary: float  # the binary-reward rule's gap in units of its tolerance (:mod:`binary_reward`; 0: not judged)
    binary_evidence: list[SignalEvidence]  # ... and, where it is broken, as evidence
    penalty: tuple[float, float, float]  # the loss-penalty statistic, window and reference loss (:mod:`loss_penalty`)
    scale: tuple[float, float, float]  # the loss-scale statistic, window and reference magnitude (:mod:`loss_scale`)
    coefficient: tuple[float, float, float, bool]  # the KL coefficient's signed units, now, before, configured?
    unscored: float = 0.0  # the share of completions no reward function scored, in units (:mod:`unscored`)
    unscored_evidence: list[SignalEvidence] = field(default_factory=list)  # ... and, above 1, as evidence
    repeats: float = 0.0  # repeated completions scored differently lately, in units (:mod:`repeat_rewards`)
    repeats_evidence: list[SignalEvidence] = field(default_factory=list)  # ... and, above 1, as evidence


class Detector:
    """Configuration-free detector: scale-free dynamics -> learned prior of faults -> calibrated threshold."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.tracker = DynamicsTracker(CUBE_SIGNALS, None, self.config.tracker)
        self.models: dict[str, lgb.Booster] = {}
        self.thresholds: dict[str, dict[str, float]] = {}  # tier -> channel ("learned", "surprise", ...) -> it
        self.surprise_scale: dict[str, float] = {}  # signal -> |z| that healthy runs reach (1 in 100 records)
        # (len(level_shift.SIGNALS), 2) each level-shift signal's limit up and down (inf: never judged)
        self.level_limits = np.full((len(level_shift.SIGNALS), 2), np.inf)
        self.fit_info: dict[str, Any] = {}
        self._live: _Live | None = None
        self.skipped_steps = 0
        self.resumes = 0
        self.last_score: float | None = None  # score of the latest observed record
        # a record alarms when its score exceeds this (1: the calibrated false-alarm budget); the loop lowers it
        # while a knob change it did not make is in effect, as the change raises the odds of a fault
        self.alarm_threshold = 1.0
        self.invariants_known = False  # see :meth:`know_invariants`
        self.schedule_jumps = False  # see :meth:`know_schedule`
        self.on_policy = False  # see :meth:`know_on_policy`
        self.stochastic_reward = False  # see :meth:`know_stochastic_reward`
        self.reward_weights: dict[str, float] | None = None  # see :meth:`know_reward_weights`
        self.kl_configured: kl_coefficient.Configured | None = None  # see :meth:`know_kl_coefficient`
        self._tier_columns: dict[str, np.ndarray] = {}
        self._single_row: dict[str, SingleRowPredictor] = {}  # tier -> its model's prepared one-row prediction
        self._surprise_columns: dict[str, tuple[np.ndarray, ...]] = {}  # tier -> (z columns, units, low, high)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        runs: pl.DataFrame,
        features: pl.DataFrame,
        groups: Sequence[str] | None = None,
        tiers: Sequence[str] = tuple(TIERS),
    ) -> "Detector":
        """Fit the models of ``tiers`` on the runs of ``runs`` (normal, control and faulty) with their
        offline ``features``. ``groups`` (one per run of ``runs``, default: task group x model size) are
        the configurations the out-of-fold calibration holds out together.
        """
        has_features = runs["run_id"].is_in(features["run_id"].unique().to_list()).to_list()
        if groups is not None:
            if len(groups) != runs.height:
                raise ValueError(f"{len(groups)} groups for {runs.height} runs")
            groups = [g for g, keep in zip(groups, has_features) if keep]
        runs = runs.filter(pl.Series(has_features))
        run_ids = runs["run_id"].to_list()
        if runs.filter(pl.col("control_or_fault").is_in(NORMAL_KINDS)).height < 3:
            raise ValueError("need at least 3 normal or control runs to calibrate a detector")
        raw, steps = runs_cube(features, run_ids)
        jumps = np.abs(schedule.cube_units(runs_schedule(features, run_ids, steps.shape[1]), steps))
        shifts = rate_shift.cube_shifts(raw, steps)
        levels = level_shift.cube_stats(raw, steps)
        penalties = loss_penalty.cube_stats(raw, steps)
        scales = loss_scale.cube_stats(raw, steps)
        normal = runs["control_or_fault"].is_in(NORMAL_KINDS).to_numpy()
        prior = fit_prior_noise(CUBE_SIGNALS, raw[normal], self.config.tracker)
        self.tracker = DynamicsTracker(CUBE_SIGNALS, prior, self.config.tracker)
        x = self.tracker.run_cube(raw)
        self.surprise_scale = _surprise_scale(x[normal], steps[normal], self.tracker.names)
        self._surprise_columns = {}
        y = _labels(runs, steps)
        if groups is None:
            groups = [f"{t}|{m}" for t, m in zip(_col(runs, "task_group"), _col(runs, "model_size"))]
        fold = _group_folds(list(groups), self.config.folds, self.config.seed)
        level_units, level_threshold = self._fit_level(levels, y == 0, steps, fold)
        self.models, self.thresholds = {}, {}
        oof_rates = {
            tier: self._fit_tier(
                tier, x, raw, y, steps, normal, fold, jumps, (level_units, level_threshold),
                {"rate_shift": shifts, "loss_penalty": penalties, "loss_scale": scales},
            )
            for tier in tiers
        }
        self.fit_info = {
            "runs": len(run_ids),
            "normal_runs": int(normal.sum()),
            "configurations": len(set(groups)),
            "records": int((steps > 0).sum()),
            "oof_normal_alarm_rate": oof_rates,
        }
        return self

    def _confirmed(self, stat: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """A calibrated channel's (R, S) statistic as it alarms: over the run's last ``consecutive`` records
        (:func:`rftfm.fm.confirm.confirmed`)."""
        return confirm.confirmed(stat, steps, self.config.consecutive)

    def _fit_level(
        self, stats: np.ndarray, healthy: np.ndarray, steps: np.ndarray, fold: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Calibrate the level-shift channel on the ``healthy`` records (normal runs', faulty runs' before onset)
        of its statistics (R, S, len(level_shift.SIGNALS)): each signal's limits on every run, and the channel's
        threshold on the largest signal's units of runs whose configurations the limits were set without (the
        folds): a configuration never seen moves its signals more than the ones the limits were set on. Returns
        the records' units under the final limits and that threshold."""
        healthy = healthy & (steps > 0)
        q = self.config.level_quantile
        held_out_max = np.full(steps.shape[0], np.nan)
        for f in np.unique(fold):
            test = fold == f
            if (~test).any():
                limits = level_shift.limits_from(stats[~test], healthy[~test], q)
                units = self._confirmed(level_shift.units(stats[test], limits), steps[test])
                held_out_max[test] = _run_max(np.where(healthy[test], units, np.nan), steps[test])
        self.level_limits = level_shift.limits_from(stats, healthy, q)
        finite = held_out_max[np.isfinite(held_out_max)]
        threshold = tail_threshold(finite, self.config.false_alarm_target / 2, self.config.tail_fraction)
        return self._confirmed(level_shift.units(stats, self.level_limits), steps), threshold

    def _fit_tier(
        self, tier: str, x: np.ndarray, raw: np.ndarray, y: np.ndarray, steps: np.ndarray, normal: np.ndarray,
        fold: np.ndarray, jumps: np.ndarray, level: tuple[np.ndarray, float], rules: dict[str, np.ndarray],
    ) -> float:
        """Calibrate and fit one tier's channels; the out-of-fold share of normal runs that alarm (any channel;
        ``jumps``: the schedule channel's units, which need no fitting; ``level``: the level-shift channel's units and
        threshold, calibrated by :meth:`_fit_level`; ``rules``: the statistics of the channels named in
        :data:`LEAST_THRESHOLDS` -- rate shift, loss penalty, loss scale --, each calibrated on every healthy record
        that has one: normal runs', and faulty runs' before onset)."""
        signals = learned_signals(tier)
        cols = _signal_columns(self.tracker.names, signals)
        oof = np.full(steps.shape, np.nan)
        for f in range(self.config.folds):
            test = fold == f
            if test.any() and (~test).any():
                model = self._train(x[~test][..., cols], y[~test], steps[~test], signals)
                oof[test] = self._predict(model, x[test][..., cols], steps[test])
        budget = self.config.false_alarm_target / 2  # shared by the two fitted channels
        learned_max = _run_max(self._confirmed(_persistent(oof, steps, self.config.persistence), steps), steps)
        surprise_max = _run_max(self._confirmed(self._surprise(x, tier), steps), steps)
        in_tier = np.isin(np.array(CUBE_SIGNALS), TIERS[tier])
        invariant_max = _run_max(
            np.fmax(
                invariants.armed_units(np.where(in_tier, raw, np.nan), steps).max(axis=-1),
                non_finite.units(non_finite.cube_lost(raw, steps)),
                np.abs(kl_coefficient.cube_units(raw, steps)),
            ),
            steps,
        )
        self.thresholds[tier] = {
            "learned": tail_threshold(learned_max[normal], budget, self.config.tail_fraction),
            "surprise": tail_threshold(surprise_max[normal], budget, self.config.tail_fraction),
            "level_shift": level[1],
        }
        alarmed = (
            (learned_max[normal] > self.thresholds[tier]["learned"])
            | (surprise_max[normal] > self.thresholds[tier]["surprise"])
            | (invariant_max[normal] > 1.0)
            | (_run_max(jumps, steps)[normal] > 1.0)
            | (_run_max(level[0], steps)[normal] > level[1])
        )
        for name, stats in rules.items():
            stats = self._confirmed(stats, steps)
            healthy_max = _run_max(np.where(y == 0, stats, np.nan), steps)
            tail = tail_threshold(healthy_max[np.isfinite(healthy_max)], budget, self.config.tail_fraction)
            self.thresholds[tier][name] = max(tail, LEAST_THRESHOLDS[name])
            alarmed |= _run_max(stats, steps)[normal] > self.thresholds[tier][name]
        self.models[tier] = self._train(x[..., cols], y, steps, signals)
        return float(np.mean(alarmed))

    def _train(self, x: np.ndarray, y: np.ndarray, steps: np.ndarray, signals: Sequence[str]) -> lgb.Booster:
        """One booster on the present records of (R, S, D) features; signals masked at random in copies."""
        rng = np.random.default_rng(self.config.seed)
        present = steps > 0
        per_run = present.sum(axis=1, keepdims=True).clip(min=1)
        weight = np.broadcast_to(1.0 / per_run, steps.shape)[present]
        rows, labels, weights = [x[present]], [y[present]], [weight]
        names = [n for n in self.tracker.names if n in GLOBAL or n.split(":")[0] in set(signals)]
        owners = np.array([n.split(":")[0] for n in names])
        for _ in range(self.config.masked_copies):
            hidden = rng.random((x.shape[0], len(signals))) < self.config.mask_probability
            masked = x.copy()
            for j, s in enumerate(signals):
                runs_hidden = np.flatnonzero(hidden[:, j])
                masked[np.ix_(runs_hidden, np.arange(x.shape[1]), np.flatnonzero(owners == s))] = np.nan
            rows.append(masked[present])
            labels.append(y[present])
            weights.append(weight)
        data, target, w = np.concatenate(rows), np.concatenate(labels), np.concatenate(weights)
        pos = w[target == 1].sum()
        neg = w[target == 0].sum()
        if pos > 0 and neg > 0:  # both classes weigh the same in total
            w = np.where(target == 1, w * (neg / pos), w)
        dataset = lgb.Dataset(
            data, label=target, weight=w, feature_name=[n.replace(":", "__") for n in names], free_raw_data=True
        )
        return lgb.train({**LGB_PARAMS, "seed": self.config.seed + 11}, dataset, num_boost_round=self.config.num_rounds)

    def _surprise(self, x: np.ndarray, tier: str) -> np.ndarray:
        """(..., ) mean of the :data:`SURPRISE_TOP` largest |innovations| of the signals it reads
        (:func:`surprise_signals`; missing, or a :data:`SURPRISE_AFTER_WARMUP` signal still in its warm-up: 0)."""
        if tier not in self._surprise_columns:  # looked up once per tier: this runs at every live record
            reads = self.config.surprise_reads
            kept = surprise_signals(tier, reads)
            low, high = np.array([counted_range(s) for s in kept]).T
            gated = SURPRISE_AFTER_WARMUP if reads == "step+eval" else ()
            self._surprise_columns[tier] = (
                np.array([self.tracker.names.index(f"{s}:z") for s in kept]),
                np.array([self.tracker.names.index(f"{s}:change0") if s in gated else -1 for s in kept]),
                np.array([self.surprise_scale.get(s, 1.0) for s in kept]),
                low,
                high,
            )
        z_cols, gates, scale, low, high = self._surprise_columns[tier]
        if x.ndim == 1:  # a live record: compiled (the same number; numpy's set-up costs more than the sort)
            return np.float64(surprise_one(x, z_cols, gates, low, high, scale, SURPRISE_TOP))
        z = x[..., z_cols]
        if (gates >= 0).any():  # a gated signal counts where its gate feature is defined
            closed = np.isnan(x[..., np.where(gates >= 0, gates, 0)]) & (gates >= 0)
            z = np.where(closed, np.nan, z)
        z = np.abs(clip(np.where(np.isnan(z), 0.0, z), low, high)) / scale
        top = np.sort(z, axis=-1)[..., -SURPRISE_TOP:]
        return np.add.reduce(top, axis=-1) / top.shape[-1]  # the mean, without np.mean's dispatch (per live record)

    def _combine(
        self, tier: str, learned: ArrayLike, surprise: ArrayLike, invariant: ArrayLike, jump: ArrayLike,
        shift: ArrayLike = 0.0, level: ArrayLike = 0.0, penalty: ArrayLike = 0.0, scale: ArrayLike = 0.0,
    ) -> np.ndarray:
        """The record's score from the learned channel's running log-odds, the surprise, the invariants, the
        learning rate's jump, the rate shift, the level shift, the loss penalty and the loss scale: the largest channel
        score against
        its threshold (an alarm above 1; log-odds compare by difference; the fitting-free channels are in units of
        their limits)."""
        fitted = self.calibrated_scores(tier, learned, surprise, shift, level, penalty, scale)
        return np.fmax(np.fmax(reduce(np.fmax, fitted), invariant), np.abs(jump))  # (NaN: a channel not judged)

    def calibrated_scores(
        self, tier: str, learned: ArrayLike, surprise: ArrayLike, shift: ArrayLike, level: ArrayLike,
        penalty: ArrayLike, scale: ArrayLike,
    ) -> list[np.ndarray]:
        """Each of the :data:`CALIBRATED` channels' scores against its threshold, in that order (the learned one's
        log-odds compare by difference; a channel the tier could not calibrate never scores)."""
        t = self.thresholds[tier]
        with np.errstate(over="ignore", invalid="ignore"):
            return [np.exp(np.asarray(learned, dtype=float) - t["learned"])] + [
                np.asarray(v, dtype=float) / t.get(name, math.inf)
                for name, v in zip(CALIBRATED[1:], (surprise, shift, level, penalty, scale))
            ]

    def _combine_one(
        self, tier: str, learned: float, surprise: float, invariant: float, jump: float, shift: float, level: float,
        penalty: float = math.nan, scale: float = math.nan,
    ) -> float:
        """:meth:`_combine` of one live record's channel scores, in Python floats (numpy's per-call set-up costs more
        than this arithmetic at every record); the same number."""
        t = self.thresholds[tier]
        excess = learned - t["learned"]
        scores = (
            math.exp(excess) if excess < 709.0 else math.inf if excess == excess else math.nan,  # (exp overflows
            # past 709.78; NaN: not judged, as before the run's first confirmed record)
            surprise / t["surprise"],
            shift / t.get("rate_shift", math.inf),
            level / t.get("level_shift", math.inf),
            penalty / t.get("loss_penalty", math.inf),
            scale / t.get("loss_scale", math.inf),
            invariant,
            abs(jump),
        )
        judged = [v for v in scores if v == v]  # NaN: a channel not judged at this record (np.fmax ignores it)
        return max(judged) if judged else math.nan

    @staticmethod
    def _predict(model: lgb.Booster, x: np.ndarray, steps: np.ndarray) -> np.ndarray:
        out = np.full(steps.shape, np.nan)
        present = steps > 0
        if present.any():
            out[present] = model.predict(x[present])
        return out

    # ------------------------------------------------------------------ offline scoring
    def _require_fitted(self) -> None:
        if not self.models:
            raise RuntimeError("detector is not fitted: call fit() or load()")

    def score_cube(
        self,
        raw: np.ndarray,
        steps: np.ndarray,
        tier: str | None = None,
        learning_rate: np.ndarray | None = None,
        identity: np.ndarray | None = None,
        binary: np.ndarray | None = None,
        unscored: np.ndarray | None = None,
        repeats: np.ndarray | None = None,
    ) -> tuple[np.ndarray, float]:
        """Scores (R, S) of a raw cube (R, S, len(CUBE_SIGNALS)) with its steps (0 = absent), and the threshold (1).

        ``tier`` defaults to the richest one the cube has (any trajectory aggregate / accuracy present).
        ``learning_rate`` (R, S): the logged learning rate (:func:`~rftfm.fm.cube.runs_schedule`) for the schedule
        channel, which is silent without it (and after :meth:`know_schedule`); after :meth:`know_on_policy`, the
        on-policy check too. The advantage invariants are read whatever the tier, as :meth:`observe` reads them (a
        trainer hands them over; armed from the first record after :meth:`know_invariants`). ``identity`` (R, S): the
        reward identity's units
        (:func:`~rftfm.fm.reward_identity.runs_units`; ``None``: not judged); ``binary`` (R, S): the binary-reward
        rule's (:func:`~rftfm.fm.binary_reward.runs_units`; ``None``: not judged); ``unscored`` (R, S): the
        unscored-completion rule's (:func:`~rftfm.fm.unscored.runs_units`; ``None``: not judged); ``repeats`` (R, S):
        the repeat-reward rule's (:func:`~rftfm.fm.repeat_rewards.runs_units`; ``None``, or after
        :meth:`know_stochastic_reward`: not judged).
        """
        self._require_fitted()
        if tier is None:
            has_traj = bool(np.isfinite(raw[..., [CUBE_SIGNALS.index(s) for s in _TRAJECTORY]]).any())
            tier = tier_of(has_traj, bool(np.isfinite(raw[..., EVAL_INDEX]).any()))
        masked = np.where(HIDDEN[tier], np.nan, raw)
        x = self.tracker.run_cube(np.where(steps[..., None] > 0, masked, np.nan))
        learned = self._predict(self.models[tier], x[..., self._columns(tier)], steps)
        learned = _persistent(learned, steps, self.config.persistence)
        invariant = np.fmax(  # the invariants whatever the tier, as :meth:`observe` reads them
            invariants.armed_units(raw, steps, self.invariants_known).max(axis=-1),
            non_finite.units(non_finite.cube_lost(masked, steps)),
        )
        for units in (identity, binary, unscored, None if self.stochastic_reward else repeats):
            if units is not None:
                invariant = np.fmax(invariant, units)
        invariant = np.fmax(invariant, np.abs(kl_coefficient.cube_units(masked, steps)))
        silent = learning_rate is None or self.schedule_jumps
        jump = np.zeros(steps.shape) if silent else np.abs(schedule.cube_units(learning_rate, steps))
        if self.on_policy:
            jump = np.fmax(jump, np.vectorize(on_policy.units)(raw[..., CUBE_SIGNALS.index(on_policy.SIGNAL)]))
        calibrated = (
            learned,
            self._surprise(x, tier),
            rate_shift.cube_shifts(masked, steps),
            level_shift.units(level_shift.cube_stats(masked, steps), self.level_limits),
            loss_penalty.cube_stats(masked, steps),
            loss_scale.cube_stats(masked, steps),
        )
        learned, surprise, shift, level, penalty, scale = (self._confirmed(c, steps) for c in calibrated)
        combined = self._combine(tier, learned, surprise, invariant, jump, shift, level, penalty, scale)
        return np.where(steps > 0, combined, np.nan), 1.0

    def score_run(
        self, run_features: pl.DataFrame, task_group: str | None = None, model_size: str | None = None
    ) -> list[Alarm]:
        """Alarms of one run's feature frame (``step`` + feature columns), exactly as streaming gives them
        (the configuration arguments are accepted for the callers' convenience and ignored)."""
        saved, skipped, resumes = self._live, self.skipped_steps, self.resumes
        run_id = str(run_features["run_id"][0]) if "run_id" in run_features.columns and run_features.height else "run"
        self.reset(run_id)
        alarms = []
        frame = run_features.sort("step")
        keys = (*FEATURES, SCHEDULE, reward_identity.PARTS, binary_reward.SPREADS, unscored.SIGNAL,
                repeat_rewards.SIGNAL)
        for row in frame.iter_rows(named=True):
            features = {f: row.get(f) for f in keys}
            alarm = self.observe_features(run_id, int(row["step"]), features)
            if alarm is not None:
                alarms.append(alarm)
        self._live, self.skipped_steps, self.resumes = saved, skipped, resumes
        return alarms

    # ------------------------------------------------------------------ streaming
    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None:
        """Start streaming run ``run_id`` (no configuration is needed: the arguments are ignored)."""
        self._require_fitted()
        self._live = _Live(run_id, self.tracker.new_state(1), FlatStreak.new(1))
        self.know_invariants(self.invariants_known)
        self._live.identity.know_weights(self.reward_weights)
        self._live.coefficient.know(self.kl_configured)

    def know_invariants(self, known: bool) -> None:
        """``known``: the run's estimator is known to make the advantage invariants hold (a TRL GRPOTrainer whose
        configuration was checked), so they are armed from the first record, this run's and the next ones'."""
        self.invariants_known = known
        if known and self._live is not None:
            self._live.invariant_held = np.maximum(self._live.invariant_held, invariants.INVARIANT_WARMUP)

    def know_reward_weights(self, weights: dict[str, float] | None) -> None:
        """The run's reward weights by function name (a TRL trainer's ``reward_func_names`` and ``reward_weights``):
        the reward identity (:mod:`rftfm.fm.reward_identity`) is judged from the first record, this run's and the next
        ones'; ``None``: its weights are fitted on each run's first records."""
        self.reward_weights = dict(weights) if weights else None
        if self._live is not None:
            self._live.identity.know_weights(self.reward_weights)

    def know_kl_coefficient(self, configured: kl_coefficient.Configured | None) -> None:
        """The KL coefficient the run's trainer is configured with (:class:`~rftfm.fm.kl_coefficient.Configured`: a
        TRL GRPOTrainer's ``beta``, loss type and length limit): a loss that carries e-fold less of it over a few
        records that agree alarms (:mod:`rftfm.fm.kl_coefficient`), this run's and the next ones'; ``None``: not
        known."""
        self.kl_configured = configured
        if self._live is not None:
            self._live.coefficient.know(configured)

    def know_schedule(self, jumps_by_design: bool) -> None:
        """``jumps_by_design``: the run's LR scheduler jumps by itself (:data:`~rftfm.fm.schedule.JUMPING_SCHEDULERS`),
        so the schedule channel stays silent for this run and the next ones."""
        self.schedule_jumps = jumps_by_design

    def know_on_policy(self, known: bool) -> None:
        """``known``: every optimiser step of the run trains on rollouts of the current policy (checked by the
        caller), so any clip ratio above 0 alarms (:mod:`rftfm.fm.on_policy`), this run's and the next ones'."""
        self.on_policy = known

    def know_stochastic_reward(self, stochastic: bool) -> None:
        """``stochastic``: the run's reward is meant to score one completion differently from call to call (a judge
        sampled at a temperature, a rank within the batch), so identical completions scored differently are no
        symptom (:mod:`rftfm.fm.repeat_rewards` stays silent), this run's and the next ones'."""
        self.stochastic_reward = stochastic

    def expect_learning_rate_change(self, factor: float) -> None:
        """The caller itself multiplied the learning rate by ``factor`` (the closed loop's own LR change): the
        schedule channel takes it out of the next logged learning rate's jump and judges only the rest."""
        if self._live is not None:
            self._live.schedule.expect(factor)

    def observe(self, step: StepRecord, trajectories: Sequence[TrajectoryRecord] = ()) -> Alarm | None:
        """Update with one logged step; an :class:`Alarm` while the score exceeds the threshold."""
        return self.observe_features(step.run_id, step.step, step_features(step, trajectories))

    def observe_features(self, run_id: str, step: int, features: dict[str, float | None]) -> Alarm | None:
        """:meth:`observe` for a precomputed feature dict (as :func:`~rftfm.fm.features.step_features` returns)."""
        return self.observe_many(run_id, [(step, features)])[0]

    def observe_many(self, run_id: str, records: Sequence[tuple[int, dict[str, float | None]]]) -> list[Alarm | None]:
        """:meth:`observe_features` for several records of one run in order (the scores are computed together:
        a log read at once costs one model call per tier instead of one per record)."""
        self._require_fitted()
        if self._live is None or self._live.run_id != run_id:
            self.reset(run_id)
        steps = [self._live.last_step] + [step for step, _ in records]
        if len(records) > 1 and any(b <= a for a, b in zip(steps, steps[1:])):  # a rewind: one record at a time
            return [self.observe_many(run_id, [record])[0] for record in records]
        pending = [self._advance(self._live, step, features) for step, features in records]
        learned: dict[int, float] = {}
        for tier in {p.tier for p in pending if p is not None}:
            idx = [i for i, p in enumerate(pending) if p is not None and p.tier == tier]
            if len(idx) == 1:  # a live record: the model's prepared one-row path
                learned[idx[0]] = self._predict_one(tier, pending[idx[0]].row)
            else:
                rows = np.vstack([pending[i].row for i in idx])
                learned.update(zip(idx, self.models[tier].predict(rows, num_threads=1).tolist()))
        return [None if p is None else self._alarm(run_id, p, learned[i]) for i, p in enumerate(pending)]

    def _advance(self, live: _Live, step: int, features: dict[str, float | None]) -> _Pending | None:
        """Move the run's tracker over one record (None: a repeated step with nothing to rewind to)."""
        if step <= live.last_step and not self._rewind(live, step):
            self.skipped_steps += 1
            return None
        raw = record_row(features)
        before = live.state.frozen()  # kept for a rollback to this step; the evidence's baseline is read from it
        live.snapshots.append(live.snapshot(step, before))
        raw[:, FLAT_INDEX] = live.flat.advance(raw[:, EVAL_INDEX])
        if not live.has_trajectories:
            live.has_trajectories = any(features.get(s) is not None for s in _TRAJECTORY_RECORDS)
        live.has_eval = live.has_eval or features.get("eval_accuracy") is not None
        tier = tier_of(live.has_trajectories, live.has_eval)
        x = self.tracker.update(live.state, np.where(HIDDEN[tier], np.nan, raw))
        invariant = invariants.advance_one(raw[0], live.invariant_held)  # whatever the tier: nothing of it is fitted
        lr_before, step_before = live.schedule.lr, (live.steps[-1] if live.steps else None)
        jump = live.schedule.advance(_finite(features.get(SCHEDULE)))
        jump = 0.0 if self.schedule_jumps else jump  # the state still follows the learning rate
        shift_now, shift_before = live.shift.advance(raw[0, rate_shift.COLUMNS], raw[0, rate_shift.WEIGHT_COLUMNS])
        level = live.level.advance(raw[0, level_shift.COLUMNS])
        penalty = live.penalty.advance(float(raw[0, loss_penalty.LOSS]), float(raw[0, loss_penalty.ENTROPY]))
        scale = live.scale.advance(*(float(raw[0, k]) for k in (loss_scale.LOSS, loss_scale.ZERO_STD, loss_scale.CLIP)))
        coefficient = live.coefficient.advance(*(float(raw[0, k]) for k in kl_coefficient.COLUMNS))
        lost = live.lost.advance(raw[0], step)
        rules = self._reward_rules(live, features, step)
        live.last_step = step
        live.steps.append(step)
        return _Pending(
            step,
            tier,
            x[:, self._columns(tier)],
            x[0],
            raw[0],
            before,
            live.state.cplus_since[0].copy(),
            live.state.cminus_since[0].copy(),
            invariant,
            jump,
            _finite(features.get(SCHEDULE)),
            lr_before,
            step_before,
            on_policy.units(features.get(on_policy.SIGNAL)) if self.on_policy else 0.0,
            shift_now,
            shift_before,
            level,
            live.lost.evidence(lost) if lost.any() else [],
            penalty=penalty, scale=scale, coefficient=coefficient, **rules,
        )

    def _reward_rules(self, live: _Live, features: dict[str, Any], step: int) -> dict[str, Any]:
        """The reward rules' units at one record and, above 1, their evidence (:class:`_Pending`'s fields)."""
        parts = features.get(reward_identity.PARTS)
        identity = live.identity.advance(features.get(reward_identity.SIGNAL), parts, step)
        binary = live.binary.advance(
            parts, features.get(binary_reward.SPREADS), _finite(features.get(binary_reward.MEAN)),
            _finite(features.get(binary_reward.SIGNAL)), step,
        )
        left = live.unscored.advance(_finite(features.get(unscored.SIGNAL)), step)
        repeats = live.repeats.advance(_finite(features.get(repeat_rewards.SIGNAL)), step)
        repeats = 0.0 if self.stochastic_reward else repeats  # (the state still follows the records)
        return {
            "identity": identity, "identity_evidence": [live.identity.evidence()] if identity > 1.0 else [],
            "binary": binary, "binary_evidence": [live.binary.evidence()] if binary > 1.0 else [],
            "unscored": left, "unscored_evidence": [live.unscored.evidence()] if left > 1.0 else [],
            "repeats": repeats, "repeats_evidence": [live.repeats.evidence()] if repeats > 1.0 else [],
        }

    def _alarm(self, run_id: str, p: _Pending, learned: float) -> Alarm | None:
        live = self._live
        previous = live.calibrated[-1][0] if live.calibrated else math.nan
        log_odds = _running_log_odds_one(previous, learned, self.config.persistence)
        surprise = float(self._surprise(p.features, p.tier))
        invariant = max(
            float(p.invariant.max()), non_finite.UNITS if p.lost else 0.0, p.identity, p.binary,
            _size(p.coefficient[0]), p.unscored,
        )
        live.calibrated.append(
            (log_odds, surprise, self._shift(p), float(level_shift.units(p.level[0], self.level_limits)),
             p.penalty[0], p.scale[0])
        )
        recent = live.calibrated[-self.config.consecutive :]
        log_odds, surprise, shift, level, penalty, scale = (
            confirm.confirm_one([r[k] for r in recent], self.config.consecutive) for k in range(6)
        )
        score = self._combine_one(p.tier, log_odds, surprise, max(invariant, p.repeats), max(abs(p.jump), p.clipped),
                                  shift, level, penalty, scale)
        self.last_score = score
        if not score > self.alarm_threshold:
            return None
        evidence = self._evidence(p)
        # a source that stays broken upstream of the trainer -- a stale sampler (the on-policy check), a verifier
        # that is no function of the completion (repeated completions scored apart) -- keeps its rule firing after
        # any repair: where that rule alone carries the alarm, its evidence alone is given, other deviations are
        # judged apart
        alone = {s for s, units in ((on_policy.SIGNAL, p.clipped), (repeat_rewards.SIGNAL, p.repeats)) if units > 1.0}
        if alone and not self._combine_one(
            p.tier, log_odds, surprise, invariant, abs(p.jump), shift, level, penalty, scale
        ) > self.alarm_threshold:
            evidence = [e for e in evidence if e.signal in alone]
        return Alarm(run_id=run_id, step=p.step, score=score, threshold=self.alarm_threshold, evidence=evidence)

    def __getstate__(self) -> dict[str, Any]:
        """Copied or pickled without the prepared one-row predictions (C handles; rebuilt on first use)."""
        return {**self.__dict__, "_single_row": {}}

    def _predict_one(self, tier: str, row: np.ndarray) -> float:
        """The tier's model's probability for one row (what ``predict`` gives, without its per-call set-up)."""
        predictor = self._single_row.get(tier)
        if predictor is None or predictor.booster is not self.models[tier]:  # (a model re-fitted or loaded since)
            predictor = self._single_row[tier] = SingleRowPredictor(self.models[tier])
        return predictor(row)

    def _columns(self, tier: str) -> np.ndarray:
        if tier not in self._tier_columns:
            self._tier_columns[tier] = _signal_columns(self.tracker.names, learned_signals(tier))
        return self._tier_columns[tier]

    def _rewind(self, live: _Live, step: int) -> bool:
        """Restore the state from before the first kept record at or after ``step`` (a rollback / resume)."""
        while live.snapshots and live.snapshots[-1][0] > step:
            live.snapshots.pop()
        if not live.snapshots or live.snapshots[-1][0] != step:
            return False
        _, state, flat, has_traj, has_eval, held, lr_state, *channels = live.snapshots.pop()
        (live.shift, live.level, live.lost, live.identity, live.binary, live.penalty, live.scale,
         live.coefficient, live.unscored, live.repeats) = channels
        live.state, live.flat, live.has_trajectories, live.has_eval = state, flat, has_traj, has_eval
        live.invariant_held, lr_state.expected = held, live.schedule.expected  # the caller's change still holds
        live.schedule = lr_state
        live.last_step = step - 1
        del live.steps[int(state.records[0]) :]
        del live.calibrated[int(state.records[0]) :]
        self.resumes += 1
        return True

    def _evidence(self, p: _Pending) -> list[SignalEvidence]:
        """Signals that pushed the score up most, each against the run's own baseline before this record."""
        contrib = self.models[p.tier].predict(p.row, pred_contrib=True, num_threads=1)[0][:-1]  # last: the bias
        names = [self.tracker.names[c] for c in self._columns(p.tier)]
        per_signal: dict[str, float] = {}
        for name, value in zip(names, contrib):
            if name not in GLOBAL:
                per_signal[name.split(":")[0]] = per_signal.get(name.split(":")[0], 0.0) + float(value)
        z: dict[str, float] = {}  # the counted innovations: a benign move (a held-out accuracy rising) is none here too
        for name, v in zip(names, p.row[0]):
            if name.endswith(":z") and math.isfinite(v):
                signal = name.split(":")[0]
                z[signal] = abs(float(clip(v, *counted_range(signal))))
        # a signal this record does not carry is never evidence (its missing value still moves the model)
        present = [s for s in per_signal if math.isfinite(p.raw[CUBE_SIGNALS.index(s)])]
        broken = [s for s, units in zip(INVARIANT_LIMITS, p.invariant) if units > 1.0]
        ranked = broken + sorted(  # a broken invariant leads: it alone is enough for the alarm
            (s for s in present if s not in broken and (per_signal[s] > 0 or z.get(s, 0.0) >= 3.0)),
            key=lambda s: -(max(per_signal[s], 0.0) + 0.05 * z.get(s, 0.0)),
        )
        out, done = self._channel_evidence(p)
        ranked = [s for s in ranked if s not in done]
        if p.clipped > 1.0:  # so is a clip ratio above 0 in a run known on-policy
            i = CUBE_SIGNALS.index(on_policy.SIGNAL)
            out.insert(0, SignalEvidence(signal=on_policy.SIGNAL, direction="up", value=float(p.raw[i]), expected=0.0))
            ranked = [s for s in ranked if s != on_policy.SIGNAL]
        for signal in ranked:
            if len(out) >= MAX_EVIDENCE:
                break
            i = CUBE_SIGNALS.index(signal)
            value = float(p.raw[i])
            expected = self._raw_level(p.before, i)
            if expected is None and signal in broken:  # an invariant's healthy level is 0 in every run, from the start
                expected = 0.0
            if expected is not None and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
                continue  # a signal at its own baseline moved the model (beside others), not itself: no evidence
            zi = p.row[0, names.index(f"{signal}:z")] if f"{signal}:z" in names else math.nan
            up = (expected is not None and value >= expected) if not math.isfinite(zi) else zi >= 0
            up = up or signal in broken  # broken invariants rise, tracked in this tier or not
            since = int(p.since_plus[i] if up else p.since_minus[i])
            steps = self._live.steps if self._live is not None else []
            out.append(
                SignalEvidence(
                    signal=signal,
                    direction="up" if up else "down",
                    value=value,
                    expected=expected,
                    z=float(zi) if math.isfinite(zi) else None,
                    ratio=(value / expected) if expected is not None and abs(expected) > 1e-12 else None,
                    since_step=steps[since - 1] if 0 < since <= len(steps) else None,
                )
            )
        return out

    def _channel_evidence(self, p: _Pending) -> tuple[list[SignalEvidence], set[str]]:
        """The evidence of the channels each enough for the alarm on its own, and the signals it names."""
        out = list(p.lost)  # a lost signal
        out += p.unscored_evidence  # completions no reward function scored
        out += p.identity_evidence  # a broken reward identity
        out += p.binary_evidence  # scores of 0 or 1 that no longer are
        out += p.repeats_evidence  # identical completions scored differently (the least specific of the four)
        out += [self._jump_evidence(p)] if abs(p.jump) > 1.0 else []  # a jump
        limit = self.thresholds[p.tier].get("rate_shift", math.inf)
        shifted = [k for k, d in enumerate(p.shift_now - p.shift_before) if d > limit]  # (NaN: not judged)
        out += [self._shift_evidence(p, k) for k in shifted]  # a rate shift
        moved = self._level_moved(p)  # a level shift
        out += [self._level_evidence(p, k) for k in moved if level_shift.SIGNALS[k] not in rate_shift.SIGNALS]
        done = {rate_shift.SIGNALS[k] for k in shifted} | {level_shift.SIGNALS[k] for k in moved}
        if p.penalty[0] > self.thresholds[p.tier].get("loss_penalty", math.inf):  # a penalty in the loss
            out.append(loss_penalty.evidence(*p.penalty, self._window_start(p, loss_penalty.WINDOW)))
            done.add("policy_loss")
        elif p.scale[0] > self.thresholds[p.tier].get("loss_scale", math.inf):  # the loss left its scale
            out.append(loss_scale.evidence(*p.scale, self._window_start(p, loss_scale.WINDOW)))
            done.add("policy_loss")
        if _size(p.coefficient[0]) > 1.0:  # the KL coefficient the loss carries moved
            out.append(kl_coefficient.evidence(*p.coefficient, self._window_start(p, kl_coefficient.WINDOW)))
            done.add("policy_loss")
        return out, done | {e.signal for e in out if e.non_finite or e.reward_identity or e.binary_mean is not None}

    def _shift(self, p: _Pending) -> float:
        """The record's largest rate shift (NaN: none judged)."""
        d = p.shift_now - p.shift_before
        return float(np.nanmax(d)) if np.isfinite(d).any() else math.nan

    def _shift_evidence(self, p: _Pending, k: int) -> SignalEvidence:
        """A rate shift as evidence: the rate pooled over the window against the one before, since the window began."""
        since = self._window_start(p, rate_shift.WINDOW)
        return rate_shift.evidence(k, float(p.shift_now[k]), float(p.shift_before[k]), since)

    def _level_moved(self, p: _Pending) -> list[int]:
        """The level-shift signals that alone take the channel over its threshold, largest first."""
        limit = self.thresholds[p.tier].get("level_shift", math.inf)
        stat = p.level[0]
        if not np.isfinite(stat).any() or not math.isfinite(limit):
            return []
        per_signal = np.nan_to_num(level_shift.signal_units(stat, self.level_limits), nan=-np.inf)
        return [int(k) for k in np.argsort(-per_signal) if per_signal[k] > limit]

    def _level_evidence(self, p: _Pending, k: int) -> SignalEvidence:
        """A level shift as evidence: the signal's mean over the window against its reference median."""
        since = self._window_start(p, level_shift.WINDOW)
        return level_shift.evidence(k, float(p.level[0][k]), float(p.level[1][k]), float(p.level[2][k]), since)

    def _window_start(self, p: _Pending, window: int) -> int | None:
        """The step of the first of the last ``window`` records up to ``p``."""
        steps = self._live.steps if self._live is not None else []
        at = steps.index(p.step) if p.step in steps else len(steps) - 1  # (records scored together: not the last)
        return steps[max(at - window + 1, 0)] if steps else None

    def _jump_evidence(self, p: _Pending) -> SignalEvidence:
        """The learning rate's jump against the record before it."""
        return schedule.jump_evidence(p.raw_lr, p.lr_before if math.isfinite(p.lr_before) else None, p.step_before)

    def _raw_level(self, state: TrackerState, i: int) -> float | None:
        """The baseline's level of signal ``i`` in the signal's own units (None before it has one)."""
        level = state.level[0, i]
        if not math.isfinite(level):
            return None
        if self.tracker.is_log[i]:
            magnitude = state.magnitude[0, i]
            return float(np.sinh(level) * magnitude) if math.isfinite(magnitude) else None
        return float(level)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            "signals": list(CUBE_SIGNALS),
            "features": list(PER_SIGNAL + GLOBAL),
            "config": {**asdict(self.config), "tracker": asdict(self.config.tracker)},
            "prior_noise": [None if not math.isfinite(v) else float(v) for v in self.tracker.prior],
            "thresholds": {  # a channel no normal run could calibrate (no tool run) is off: null, not Infinity
                tier: {k: (v if math.isfinite(v) else None) for k, v in channels.items()}
                for tier, channels in self.thresholds.items()
            },
            "surprise_scale": self.surprise_scale,
            "level_limits": {  # up and down; null: never judged that way
                s: [v if math.isfinite(v) else None for v in limits.tolist()]
                for s, limits in zip(level_shift.SIGNALS, self.level_limits)
            },
            "fit_info": self.fit_info,
            "models": {tier: model.model_to_string() for tier, model in self.models.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Detector":
        if data.get("format") != FORMAT:
            raise ValueError("not an rftfm configuration-free detector artifact")
        if data.get("version") != VERSION:
            raise ValueError(f"detector artifact version {data.get('version')} is not supported (expected {VERSION})")
        if list(data["signals"]) != list(CUBE_SIGNALS) or list(data["features"]) != list(PER_SIGNAL + GLOBAL):
            raise ValueError("detector artifact was trained on a different signal list; re-fit it")
        config = dict(data["config"])
        config["tracker"] = TrackerConfig(**config["tracker"])
        config.setdefault("consecutive", 1)  # saved before confirmation was a setting: calibrated record by record
        config.setdefault("surprise_reads", "tier")  # saved before it was a setting: calibrated on the tier's signals
        det = cls(DetectorConfig(**config))
        prior = np.array([np.nan if v is None else v for v in data["prior_noise"]], dtype=float)
        det.tracker = DynamicsTracker(CUBE_SIGNALS, prior, det.config.tracker)
        det.thresholds = {
            tier: {k: math.inf if v is None else float(v) for k, v in channels.items()}
            for tier, channels in data["thresholds"].items()
        }
        det.models = {tier: lgb.Booster(model_str=text) for tier, text in data["models"].items()}
        for tier, model in det.models.items():
            if model.num_feature() != len(det._columns(tier)):
                raise ValueError(f"detector artifact's tier {tier} model reads other signals; re-fit it")
        det.fit_info = data.get("fit_info", {})
        det.surprise_scale = {k: float(v) for k, v in data.get("surprise_scale", {}).items()}
        limits = data["level_limits"]
        if sorted(limits) != sorted(level_shift.SIGNALS):
            raise ValueError("detector artifact's level-shift channel reads other signals; re-fit it")
        det.level_limits = np.array(
            [[math.inf if v is None else float(v) for v in limits[s]] for s in level_shift.SIGNALS], dtype=float
        )
        return det

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Detector":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def load_default(cls) -> "Detector":
        """The artifact shipped with the package (fitted on the benchmark's training configurations)."""
        if not DEFAULT_ARTIFACT.exists():
            raise FileNotFoundError(f"no default detector artifact at {DEFAULT_ARTIFACT}; run `rftfm fit detector`")
        return cls.load(DEFAULT_ARTIFACT)


def describe(e: SignalEvidence) -> str:
    """One evidence item in the run's own terms, e.g. ``KL 0.48 vs 0.012 before (x40) since step 37``."""
    name = label(e.signal)
    if e.non_finite:
        return non_finite.describe(e)
    if e.reward_identity:
        return reward_identity.describe(e)
    if e.signal == unscored.SIGNAL:
        return unscored.describe(e)
    if e.signal == repeat_rewards.SIGNAL:
        return repeat_rewards.describe(e)
    if e.binary_mean is not None:
        return binary_reward.describe(e)
    if e.penalty_term is not None:
        return loss_penalty.describe_term(e)
    if e.per_kl:
        return kl_coefficient.describe(e)
    if e.value is None:
        return f"{name} {'up' if e.direction == 'up' else 'down'}" if e.measured else name
    text = f"{name} {e.value:.3g}"
    if e.expected is not None:
        text += f" vs {e.expected:.3g} before"
        if e.ratio is not None and e.ratio > 0 and (e.ratio >= 1.5 or e.ratio <= 1 / 1.5):
            text += f" (x{e.ratio:.3g})"
    if e.since_step is not None:
        text += f" since step {e.since_step}"
    return text


def _size(units: float) -> float:
    """A signed statistic's size (NaN: not judged, 0)."""
    return abs(units) if units == units else 0.0


def _logit(p: np.ndarray | float) -> np.ndarray:
    q = clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _running_log_odds(previous: np.ndarray, p: np.ndarray | float, weight: float) -> np.ndarray:
    """Exponentially weighted log-odds of the learned channel after one more record of probability ``p``
    (``previous`` NaN: the run's first record)."""
    new = _logit(p)
    return np.where(np.isfinite(previous), weight * new + (1 - weight) * previous, new)


def _running_log_odds_one(previous: float, p: float, weight: float) -> float:
    """:func:`_running_log_odds` of one live record, in Python floats; the same number."""
    q = min(max(p, 1e-6), 1 - 1e-6)
    new = math.log(q / (1 - q))
    return weight * new + (1 - weight) * previous if math.isfinite(previous) else new


def _persistent(p: np.ndarray, steps: np.ndarray, weight: float) -> np.ndarray:
    """(R, S) :func:`_running_log_odds` over each run's present records (NaN where absent)."""
    out = np.full(p.shape, np.nan)
    state = np.full(p.shape[0], np.nan)
    for j in range(p.shape[1]):
        present = (steps[:, j] > 0) & np.isfinite(p[:, j])
        state = np.where(present, _running_log_odds(state, np.where(present, p[:, j], 0.5), weight), state)
        out[:, j] = np.where(present, state, np.nan)
    return out


def counted_range(signal: str) -> tuple[float, float]:
    """The innovations of ``signal`` the surprise channel counts, as a (low, high) clip: a move in the signal's
    benign direction (:attr:`rftfm.signals.Signal.benign`: a held-out accuracy rising as the run learns) counts as
    none. No registered fault shows itself that way, and a run that suddenly learns -- a tool format that clicks
    -- moved the channel in healthy runs."""
    benign = SIGNALS[signal].benign if signal in SIGNALS else None
    return (0.0 if benign == "down" else -math.inf, 0.0 if benign == "up" else math.inf)


def _surprise_scale(x: np.ndarray, steps: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per signal, the counted |z| (:func:`counted_range`) that healthy records exceed 1 time in 100 (at least 1):
    a signal that is noisy by nature in healthy runs (the spread of lengths in a batch of eight) surprises only
    beyond its own tail."""
    present = steps > 0
    out = {}
    for i, name in enumerate(names):
        if name.endswith(":z"):
            z = np.abs(clip(x[..., i][present], *counted_range(name.split(":")[0])))
            z = z[np.isfinite(z)]
            out[name.split(":")[0]] = float(max(np.quantile(z, 0.99), 1.0)) if z.size >= 20 else 1.0
    return out


def _run_max(scores: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(R,) each run's largest score over its present records."""
    return np.nanmax(np.where(steps > 0, np.nan_to_num(scores, nan=-np.inf), -np.inf), axis=1)


def _labels(runs: pl.DataFrame, steps: np.ndarray) -> np.ndarray:
    """(R, S) 1 where the run's fault acts at that step (steps >= onset of an injected run)."""
    faulty = (runs["control_or_fault"] == "fault").to_numpy()
    onset = np.array([o if o is not None else 1 for o in _col(runs, "onset_step")], dtype=float)
    return ((steps >= onset[:, None]) & faulty[:, None] & (steps > 0)).astype(float)


def _group_folds(groups: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold of each run: whole groups (configurations) go to one fold (runs, when there are fewer groups than folds)."""
    if len(set(groups)) < folds:
        groups = [f"{g}#{i}" for i, g in enumerate(groups)]
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {g: int(order[i]) % folds for i, g in enumerate(unique)}
    return np.array([fold_of[g] for g in groups])


def _col(frame: pl.DataFrame, name: str) -> list[Any]:
    return frame[name].to_list() if name in frame.columns else [None] * frame.height


def _finite(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


class CombinedDetector:
    """The configuration-free detector and a per-configuration one fitted on the user's own normal runs:
    an alarm when either alarms (the per-configuration one knows the user's setup, the other knows faults)."""

    def __init__(self, zero_shot: Detector, profile: Any) -> None:
        self.zero_shot, self.profile = zero_shot, profile

    @property
    def alarm_threshold(self) -> float:
        """The configuration-free detector's (the per-configuration one keeps its calibrated threshold)."""
        return self.zero_shot.alarm_threshold

    @alarm_threshold.setter
    def alarm_threshold(self, value: float) -> None:
        self.zero_shot.alarm_threshold = value

    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None:
        self.zero_shot.reset(run_id)
        self.profile.reset(run_id, task_group, model_size)

    def know_invariants(self, known: bool) -> None:
        self.zero_shot.know_invariants(known)

    def expect_learning_rate_change(self, factor: float) -> None:
        self.zero_shot.expect_learning_rate_change(factor)

    def know_schedule(self, jumps_by_design: bool) -> None:
        self.zero_shot.know_schedule(jumps_by_design)

    def know_on_policy(self, known: bool) -> None:
        self.zero_shot.know_on_policy(known)

    def know_stochastic_reward(self, stochastic: bool) -> None:
        self.zero_shot.know_stochastic_reward(stochastic)

    def know_reward_weights(self, weights: dict[str, float] | None) -> None:
        self.zero_shot.know_reward_weights(weights)

    def know_kl_coefficient(self, configured: kl_coefficient.Configured | None) -> None:
        self.zero_shot.know_kl_coefficient(configured)

    def observe(self, step: StepRecord, trajectories: Sequence[TrajectoryRecord] = ()) -> Alarm | None:
        a = self.zero_shot.observe(step, trajectories)
        b = self.profile.observe(step, trajectories)
        if a is None or b is None:
            return a or b
        return a if a.score / a.threshold >= b.score / b.threshold else b


def load_artifact(path: str | Path) -> Detector | CombinedDetector:
    """A detector artifact of either kind: the configuration-free one as it is, or a per-configuration one
    (``rftfm fit detector --profile`` on the user's own normal runs) combined with the packaged default."""
    from rftfm.fm.profile_detect import ProfileDetector

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("format") == FORMAT:
        return Detector.from_dict(data)
    return CombinedDetector(Detector.load_default(), ProfileDetector.from_dict(data))
