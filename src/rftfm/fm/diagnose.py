"""Failure diagnosis at alarm time: fault family and type, with evidence, or "unknown" -- zero-shot.

Model (documented in docs/diagnosis.md):

1. The history up to the diagnosis step is tracked like the detector tracks it
   (:mod:`rftfm.fm.dynamics`): every signal against the run's own baseline, in the run's own
   noise units; :mod:`rftfm.fm.diagnosis_features` summarises it (recent and peak innovation,
   accumulated shift, drift since the run's warm-up, levels of fractions). No normal run of the
   user's configuration is needed.
2. A LightGBM multiclass model over the fault types (trained on several diagnosis steps per
   faulty run, so it does not depend on one alarm delay, and on copies of each row with the
   signals of each input tier hidden, so one model serves logs with and without trajectories and
   held-out accuracy); family probability is the sum of its types' probabilities.
3. Abstention: "unknown" when the best family is not probable enough, or when the history is
   far (k-nearest-neighbour distance) from every training run of the best type -- both
   thresholds are set on out-of-fold predictions (folds hold out whole configurations).
4. Two things seen in the log, not guessed, overrule the model's ranking (only the types they fit remain, and the
   diagnosis does not abstain): a broken advantage invariant (:mod:`rftfm.fm.invariants`), and a recent jump of the
   logged learning rate that no schedule makes (:mod:`rftfm.fm.schedule`; the types the registry says move it that
   way).
5. Evidence in the run's own terms: the signals whose recent innovation is large, each with its
   value now, its level before the deviation began and the step it began; the signals the
   taxonomy expects for the diagnosed type come first.

Saved as one JSON file (metadata, prior noise, kNN reference, LightGBM text model): no pickle.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import (
    advantage_signs,
    binary_reward,
    invariants,
    kl_coefficient,
    loss_penalty,
    loss_scale,
    non_finite,
    on_policy,
    repeat_rewards,
    reward_identity,
    schedule,
    unscored,
)
from rftfm.fm.cube import CUBE_SIGNALS, runs_cube, runs_schedule, tail_threshold
from rftfm.fm.detect import TIERS
from rftfm.fm.diagnosis_features import KINDS, diagnosis_feature_names, diagnosis_matrix, mask_signals, vectors
from rftfm.fm.dynamics import DynamicsTracker, TrackerConfig, TrackerState, fit_prior_noise
from rftfm.fm.features import INVARIANT_FEATURES
from rftfm.fm.types import Diagnosis, Hypothesis, SignalEvidence
from rftfm.signals import SIGNALS, label

FORMAT_VERSION = 3  # 3: the level-shift statistic among the features
DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "diagnoser.json"
#: diagnosis steps (relative to onset) used to train, so the model sees several alarm delays
TRAIN_OFFSETS = (0, 1, 2, 3, 4, 6, 9)
#: kinds of features that span the kNN novelty space
NOVELTY_KINDS = ("z_recent", "change0")
NOVELTY_K = 3
NOVELTY_MAX_REFERENCE = 1500  # keeps the artifact < 2 MB
#: fraction of known-fault training diagnoses allowed to abstain (per threshold)
ABSTAIN_FAMILY_QUANTILE = 0.01
ABSTAIN_NOVELTY_QUANTILE = 0.99
EVIDENCE_Z = 2.0
CUSUM_PER_Z = 2.0  # an accumulated shift of 2 noise units weighs like one innovation of 1
SINCE_Z = 1.5
LGB_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 8,
    "min_data_in_leaf": 5,
    "feature_fraction": 0.3,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 1,
    "seed": 7,
    "deterministic": True,
}
NUM_ROUNDS = 80
#: A length limit too short is seen in the share of completions that hit it: at or below this share at the diagnosed
#: record (logged), no length-limit type fits (the benchmark's length faults keep it at 0.09 or more after onset).
UNTRUNCATED = 0.01
#: Every completion clipped: a truncated ratio at or above this share at the diagnosed record
#: (:meth:`Diagnoser.apply_gradient`).
CLIPPED_ALL = 0.99
#: No gradient: a grad norm at or below this share of the run's median before the record (exactly 0 with none before).
NO_GRADIENT = 1e-6
PENALTY_RATE = 0.01  # the share of normal runs whose loss-penalty statistic exceeds the diagnoser's bar somewhere
#: Records the diagnoser reads a penalty over (the detector's channel waits for :data:`~rftfm.fm.loss_penalty.WINDOW`):
#: an alarm may come from the loss-scale channel two records after a push, when the window of 4 still holds two
#: records from before it and reads no penalty yet.
PENALTY_WINDOW = 2
TRUNCATED = CUBE_SIGNALS.index("truncated_ratio")
GRAD_NORM = CUBE_SIGNALS.index("grad_norm")
KL = CUBE_SIGNALS.index("kl")
#: Signals the model reads: all but the advantage invariants (every benchmark run's estimator is group-relative, so
#: a model would take any residual for a fault, false for PPO's advantages); they act as a rule instead
#: (:meth:`Diagnoser.apply_invariants`).
READ_SIGNALS = tuple(s for s in CUBE_SIGNALS if s not in INVARIANT_FEATURES)


@dataclass(frozen=True)
class Seen:
    """What one run's log shows at the diagnosed record that rules read, not the model (:meth:`Diagnoser.apply_seen`):
    the advantage invariants it breaks, the learning rate's recent jump (signed units; 0: none) and the record it came
    at, the numbers it has lost and the ones missing from that record (:mod:`rftfm.fm.non_finite`), whether it broke
    its reward identity (and whether it holds it over several functions: ``identity_holds``), whether that record's
    completions (almost) all ended before the length limit (:func:`untruncated_now`), whether the run logged no KL
    (:func:`without_kl`), the loss-penalty statistic's largest value over the last records (:func:`penalty_now`), the
    term that penalty multiplies (:func:`rftfm.fm.loss_penalty.penalty_term`; None: not told) and the loss-scale
    statistic's largest value over the last records with the loss's magnitude there as evidence
    (:func:`rftfm.fm.loss_scale.reading`), and whether a reward function whose scores were 0 or 1 no longer is
    (:func:`rftfm.fm.binary_reward.run_evidence`), and the KL coefficient rule's signed units over the last records
    with the change as evidence (:func:`rftfm.fm.kl_coefficient.reading`), and whether one of the last records lost
    completions to no reward function scoring them (:func:`rftfm.fm.unscored.run_evidence`: per-completion records
    or the trainer tell it; a log of step metrics does not), whether one of them scored identical completions of one
    prompt differently (:func:`rftfm.fm.repeat_rewards.run_evidence`: the same sources; ``repeats``), and whether its
    last records flipped advantage signs
    (True), held them (False) or were not judged (None) (:func:`rftfm.fm.advantage_signs.reading`: the same
    sources), and the trainer knobs a change the loop did not make pushed lately (:meth:`Diagnoser.know_pushed`),
    and whether the record's gradient flowed (True), was gone (False) or was not logged (None), and whether it clipped
    every completion (:func:`gradient_now`)."""

    broken: list[str]
    jump: float
    jump_at: int | None
    lost: list[str]
    missing: list[str]
    identity: bool
    untruncated: bool
    no_kl: bool
    penalty: float = math.nan
    penalty_term: str | None = None
    scale: float = math.nan
    scale_evidence: SignalEvidence | None = None
    binary: bool = False
    coefficient: float = math.nan
    coefficient_evidence: SignalEvidence | None = None
    identity_holds: bool = False
    unscored: bool = False
    flipped: bool | None = None
    pushed: tuple[str, ...] = ()
    repeats: bool = False
    gradient: bool | None = None
    clipped_all: bool = False

    @classmethod
    def read(
        cls,
        raw: np.ndarray,
        steps: np.ndarray,
        lr: np.ndarray,
        broken: list[str],
        identity: bool,
        binary: bool = False,
        identity_holds: bool = False,
        kl_configured: kl_coefficient.Configured | None = None,
        unscored: bool = False,
        flipped: bool | None = None,
        pushed: Sequence[str] = (),
        repeats: bool = False,
    ) -> "Seen":
        """The reading of one run's records (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,), its logged learning rate
        ``lr`` (S,)) up to the diagnosed one; ``broken``, ``identity``, ``binary``, ``identity_holds`` and
        ``unscored`` as the caller read them (they depend on what it knows of the run's estimator and reward weights,
        and on the reward functions' sds; ``kl_configured``: the KL coefficient the trainer is configured with, when
        known; ``unscored``: whether it saw completions no reward function scored lately; ``flipped``: whether
        advantage signs flipped lately, as :func:`rftfm.fm.advantage_signs.reading` says; ``pushed``: the knobs the
        trainer saw pushed lately, :meth:`Diagnoser.know_pushed`; ``repeats``: whether it saw identical completions
        scored differently lately)."""
        jump, at = schedule.recent_jump(lr, steps)
        return cls(broken, jump, at, non_finite.lost_now(raw, steps), non_finite.missing_now(raw, steps), identity,
                   untruncated_now(raw, steps), without_kl(raw, steps), penalty_now(raw, steps),
                   loss_penalty.penalty_term(raw, steps, PENALTY_WINDOW)[0], *loss_scale.reading(raw, steps),
                   binary, *kl_coefficient.reading(raw, steps, configured=kl_configured), identity_holds, unscored,
                   flipped, tuple(pushed), repeats, *gradient_now(raw, steps))


@dataclass
class _Scores:
    type_prob: np.ndarray  # (n, classes)
    novelty: np.ndarray  # (n,)


class Diagnoser:
    """Ranks fault types for a run's history up to an alarm; abstains on unfamiliar patterns."""

    def __init__(self) -> None:
        self.tracker: DynamicsTracker | None = None
        self.classes: list[str] = []
        self.feature_names: list[str] = []
        self.booster: lgb.Booster | None = None
        self.novelty_scale: np.ndarray | None = None
        self.novelty_reference: np.ndarray | None = None
        self.family_threshold: float = 0.0
        self.novelty_thresholds: np.ndarray = np.zeros(0)  # per class
        self.novelty_labels: np.ndarray = np.zeros(0, dtype=int)  # class of each reference row
        self.info: dict[str, Any] = {}
        self.invariants_known = False  # see :meth:`know_invariants`
        self.on_policy = False  # see :meth:`know_on_policy`
        self.stochastic_reward = False  # see :meth:`know_stochastic_reward`
        self.reward_weights: dict[str, float] | None = None  # see :meth:`know_reward_weights`
        self.kl_configured: kl_coefficient.Configured | None = None  # see :meth:`know_kl_coefficient`
        self.pushed: tuple[str, ...] = ()  # see :meth:`know_pushed`
        # the loss-penalty statistic above which the log shows a penalty in the loss (:meth:`apply_penalty`)
        self.penalty_bar = math.inf
        # the loss-scale statistic above which the loss has left its scale (:meth:`apply_penalty`)
        self.scale_bar = math.inf
        self._tracked: dict[str, tuple[np.ndarray, TrackerState, np.ndarray]] = {}  # see :meth:`_track`

    # ------------------------------------------------------------------ training
    def fit(
        self,
        runs: pl.DataFrame,
        features: pl.DataFrame,
        alarm_steps: dict[str, int] | None = None,
        groups: list[str] | None = None,
    ) -> "Diagnoser":
        """Learn the prior noise from normal / control runs and the classifier from faulty runs.

        ``runs`` carries the labels (training only); ``features`` is a ``features_frame``.
        ``alarm_steps`` (run_id -> step) trains at those steps (and neighbours); without it,
        at :data:`TRAIN_OFFSETS` after each run's onset. ``groups`` (one per run of ``runs``: its
        configuration) are held out together for the out-of-fold calibration.
        """
        features = features.drop([c for c in ("fault_active",) if c in features.columns])
        group_of = dict(zip(runs["run_id"].to_list(), groups or runs["run_id"].to_list()))
        normal = runs.filter(pl.col("control_or_fault").is_in(["normal", "control"]))
        faulty = runs.filter((pl.col("control_or_fault") == "fault") & pl.col("fault_type").is_not_null())
        if faulty.height == 0:
            raise ValueError("no faulty runs to learn fault types from")
        reference = normal if normal.height else runs
        raw, steps = runs_cube(features, reference["run_id"].to_list())
        prior = fit_prior_noise(CUBE_SIGNALS, raw)
        penalty_max = np.fmax.reduce(loss_penalty.cube_stats(raw, steps, PENALTY_WINDOW), axis=1)
        bar = tail_threshold(penalty_max[np.isfinite(penalty_max)], PENALTY_RATE)
        self.penalty_bar = max(bar, loss_penalty.MIN_THRESHOLD)
        scale_max = np.fmax.reduce(loss_scale.cube_stats(raw, steps), axis=1)
        bar = tail_threshold(scale_max[np.isfinite(scale_max)], PENALTY_RATE)
        self.scale_bar = max(bar, loss_scale.MIN_THRESHOLD)
        self.tracker = DynamicsTracker(CUBE_SIGNALS, prior, TrackerConfig(task_levels=True))
        self.feature_names = diagnosis_feature_names()
        self.classes = [t for t in FAULT_TYPES if t in set(faulty["fault_type"].to_list())]
        x, keys = diagnosis_matrix(features, self._training_steps(faulty, features, alarm_steps), self.tracker)
        label = dict(faulty.select("run_id", "fault_type").iter_rows())
        y = np.array([self.classes.index(label[rid]) for rid, _ in keys])
        run_of = np.array([rid for rid, _ in keys])
        x, y, run_of = self._tier_copies(x, y, run_of)
        config = np.array([str(group_of.get(r, r)) for r in run_of])
        self._fit_novelty(x, y, run_of)
        oof = self._out_of_fold(x, y, config, run_of)
        self.booster = self._train(x, y)
        self._calibrate(oof, y)
        self.info = {
            "train_runs": int(len(set(run_of))),
            "train_rows": int(len(y)),
            "normal_runs": int(normal.height),
            "configurations": int(len(set(config))),
            "oof_type_accuracy": float(np.mean(oof.type_prob.argmax(1) == y)),
        }
        return self

    @staticmethod
    def _training_steps(
        faulty: pl.DataFrame, features: pl.DataFrame, alarm_steps: dict[str, int] | None
    ) -> dict[str, list[int]]:
        last = dict(features.group_by("run_id").agg(pl.col("step").max()).iter_rows())
        at_steps: dict[str, list[int]] = {}
        for row in faulty.iter_rows(named=True):
            rid, end = row["run_id"], last.get(row["run_id"])
            if end is None:
                continue
            if alarm_steps is not None and rid in alarm_steps:
                base, offsets = int(alarm_steps[rid]), (-1, 0, 1, 3)
            else:
                base, offsets = int(row["onset_step"] or 1), TRAIN_OFFSETS
            at_steps[rid] = sorted({min(max(base + o, 1), end) for o in offsets})
        return at_steps

    def _tier_copies(self, x: np.ndarray, y: np.ndarray, run_of: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each row once per input tier, with the signals that tier lacks hidden."""
        copies = [mask_signals(x, self.feature_names, [s for s in TIERS[t] if s in READ_SIGNALS]) for t in TIERS]
        return np.vstack(copies), np.tile(y, len(copies)), np.tile(run_of, len(copies))

    def _train(self, x: np.ndarray, y: np.ndarray) -> lgb.Booster:
        params = dict(LGB_PARAMS, num_class=len(self.classes))
        if len(self.classes) == 1:
            params.update(objective="multiclass", num_class=1)
        data = lgb.Dataset(
            x, label=y, feature_name=[n.replace(".", "__") for n in self.feature_names], free_raw_data=True
        )
        return lgb.train(params, data, num_boost_round=NUM_ROUNDS)

    def _out_of_fold(
        self, x: np.ndarray, y: np.ndarray, config: np.ndarray, run_of: np.ndarray, folds: int = 4
    ) -> _Scores:
        """Out-of-fold type probabilities and novelty of the training rows (for calibration): whole
        configurations held out when there are enough of them, else whole runs."""
        from sklearn.model_selection import GroupKFold

        groups = config if len(set(config)) >= folds else run_of
        prob = np.zeros((len(y), len(self.classes)))
        splitter = GroupKFold(n_splits=min(folds, len(set(groups))))
        for train_idx, test_idx in splitter.split(x, y, groups):
            booster = self._train(x[train_idx], y[train_idx])
            prob[test_idx] = self._predict(booster, x[test_idx])
        return _Scores(prob, self._novelty(x, y, exclude=run_of))

    def _predict(self, booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
        prob = np.asarray(booster.predict(x))
        return prob.reshape(len(x), -1)

    def _novelty_space(self, x: np.ndarray) -> np.ndarray:
        idx = [
            i
            for i, n in enumerate(self.feature_names)
            if n.split(".")[0] in NOVELTY_KINDS
            and SIGNALS.get(n.split(".", 1)[1]) is not None
            and SIGNALS[n.split(".", 1)[1]].source == "step"
        ]  # present in every tier
        sub = np.nan_to_num(x[:, idx], nan=0.0)
        return np.clip(sub, -10.0, 10.0)

    def _fit_novelty(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
        space = self._novelty_space(x)
        self.novelty_scale = np.maximum(space.std(axis=0), 0.5)
        keep = np.arange(len(space))
        if len(keep) > NOVELTY_MAX_REFERENCE:  # keeps the saved artifact small
            keep = np.sort(np.random.default_rng(0).choice(keep, NOVELTY_MAX_REFERENCE, replace=False))
        self.novelty_reference = np.round(space[keep] / self.novelty_scale, 2)
        self._reference_groups = groups[keep]
        self.novelty_labels = y[keep]

    def _novelty(self, x: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Mean distance to the k nearest training rows of class ``labels[i]`` (of other runs when ``exclude`` is
        given)."""
        assert self.novelty_reference is not None and self.novelty_scale is not None
        q = self._novelty_space(x) / self.novelty_scale
        ref = self.novelty_reference
        d = np.sqrt(np.maximum(((q**2).sum(1)[:, None] + (ref**2).sum(1)[None, :] - 2 * q @ ref.T), 0.0)) / math.sqrt(
            ref.shape[1]
        )
        if exclude is not None:
            d = np.where(exclude[:, None] == self._reference_groups[None, :], np.inf, d)
        d = np.where(labels[:, None] == self.novelty_labels[None, :], d, np.inf)
        k = min(NOVELTY_K, ref.shape[0])
        return np.sort(d, axis=1)[:, :k].mean(axis=1)

    def _family_prob(self, type_prob: np.ndarray) -> tuple[list[str], np.ndarray]:
        families = sorted({FAULT_TYPES[t].family for t in self.classes})
        out = np.zeros((type_prob.shape[0], len(families)))
        for j, t in enumerate(self.classes):
            out[:, families.index(FAULT_TYPES[t].family)] += type_prob[:, j]
        return families, out

    def _calibrate(self, oof: _Scores, y: np.ndarray) -> None:
        """Abstention thresholds from out-of-fold scores of the training diagnoses.

        Family: a low quantile of the best family's probability. Novelty, per type: a high
        quantile of the distance of that type's diagnoses to the nearest other runs of the type,
        so a pattern the model assigns to a type it does not resemble is called unknown.
        """
        _, fam = self._family_prob(oof.type_prob)
        self.family_threshold = float(np.quantile(fam.max(1), ABSTAIN_FAMILY_QUANTILE))
        thresholds = []
        for c in range(len(self.classes)):
            d = oof.novelty[(y == c) & np.isfinite(oof.novelty)]
            thresholds.append(float(np.quantile(d, ABSTAIN_NOVELTY_QUANTILE)) if d.size else math.inf)
        self.novelty_thresholds = np.array(thresholds)

    # ------------------------------------------------------------------ inference
    def _check(self) -> None:
        if self.booster is None or self.tracker is None:
            raise RuntimeError("Diagnoser is not fitted; call fit() or load()")

    def know_on_policy(self, known: bool) -> None:
        """``known``: the run trains on-policy (:meth:`rftfm.fm.detect.Detector.know_on_policy`), so a recent clip
        ratio above 0 leaves only the types whose fingerprint leads with it, like a broken invariant."""
        self.on_policy = known

    def know_stochastic_reward(self, stochastic: bool) -> None:
        """``stochastic``: the run's reward is meant to score one completion differently from call to call
        (:meth:`rftfm.fm.detect.Detector.know_stochastic_reward`), so identical completions scored differently rule
        nothing out."""
        self.stochastic_reward = stochastic

    def know_reward_weights(self, weights: dict[str, float] | None) -> None:
        """The run's reward weights by function name (:meth:`rftfm.fm.detect.Detector.know_reward_weights`)."""
        self.reward_weights = dict(weights) if weights else None

    def know_kl_coefficient(self, configured: kl_coefficient.Configured | None) -> None:
        """The KL coefficient the run's trainer is configured with
        (:meth:`rftfm.fm.detect.Detector.know_kl_coefficient`): a loss seen to carry e-fold less leaves only the types
        that keep the penalty out of the loss."""
        self.kl_configured = configured

    def know_pushed(self, knobs: Sequence[str]) -> None:
        """The trainer knobs a change nobody in the loop made pushed lately and that still hold the pushed value (the
        TRL callback's knob ledger, :func:`rftfm.fm.policy.recent_pushes`): the next diagnoses rank first the types
        that push one of them (:meth:`apply_pushed`). Empty: none (the default, and a log read after the fact)."""
        self.pushed = tuple(knobs)

    def know_invariants(self, known: bool) -> None:
        """``known``: the runs' estimator makes the advantage invariants hold, so they count from the first record
        (:meth:`rftfm.fm.detect.Detector.know_invariants`)."""
        self.invariants_known = known

    def diagnose(
        self,
        history: pl.DataFrame,
        run_id: str,
        step: int,
        task_group: str | None = None,
        model_size: str | None = None,
    ) -> Diagnosis:
        """Diagnose ``run_id`` from its ``features_frame`` rows with ``step <= step`` (no configuration needed:
        ``task_group`` and ``model_size`` are accepted for the caller's convenience and ignored)."""
        self._check()
        assert self.tracker is not None and self.booster is not None
        if "run_id" in history.columns:
            history = history.filter(pl.col("run_id") == run_id)
        history = history.filter(pl.col("step") <= step).with_columns(pl.lit(run_id).alias("run_id"))
        if history.height == 0:
            return Diagnosis(
                run_id=run_id, step=step, ranked=[], unknown=True, summary="unknown fault: no history to diagnose"
            )
        cube, steps = runs_cube(history, [run_id])
        tracked = self._track(run_id, cube)[0]
        x = vectors(tracked, steps[0], [step], self.tracker, cube[0])
        broken = seen_broken(cube[0], steps[0], self.invariants_known, self.on_policy)
        lr = runs_schedule(history, [run_id], steps.shape[1])[0]
        identity, holds = reward_identity.reading(history, run_id, step, self.reward_weights)
        binary = binary_reward.run_evidence(history, run_id, step)
        unscored_now = unscored.run_evidence(history, run_id, step)
        repeats_now = None if self.stochastic_reward else repeat_rewards.run_evidence(history, run_id, step)
        flipped, flips = advantage_signs.reading(history, run_id, step, self.invariants_known)
        seen = Seen.read(cube[0], steps[0], lr, broken, identity is not None, binary is not None, holds,
                         self.kl_configured, unscored_now is not None, flipped, self.pushed, repeats_now is not None)
        probs, unknowns = self.apply_seen(*self.scores(x), [seen])
        prob, unknown = probs[0], bool(unknowns[0])
        order = np.argsort(-prob)
        ranked = [Hypothesis(family=FAULT_TYPES[self.classes[i]].family, fault_type=self.classes[i],
                             probability=round(float(prob[i]), 4)) for i in order]
        evidence = self.evidence(cube[0], steps[0], tracked, None if unknown else ranked[0].fault_type)
        flipping = [] if flips is None else [flips]  # which kind of advantage bug: seen, after the invariants
        evidence = invariant_evidence(cube[0], steps[0], broken) + flipping + [
            e for e in evidence if e.signal not in broken
        ]
        evidence = jump_evidence(lr, steps[0], seen.jump_at) + evidence
        gone = non_finite.run_evidence(cube[0], steps[0], seen.missing)
        evidence = gone + [e for e in evidence if e.signal not in seen.missing]
        for rule in (repeats_now, binary, identity, unscored_now):  # a reward rule broken, seen in the log: it leads
            if rule is not None:
                evidence = [rule] + [e for e in evidence if e.signal != rule.signal]
        loss = self._loss_evidence(cube[0], steps[0], seen)
        if loss is not None:
            evidence = [loss] + [e for e in evidence if e.signal != loss.signal]
        return Diagnosis(
            run_id=run_id,
            step=int(step),
            ranked=ranked,
            unknown=unknown,
            evidence=evidence,
            summary=summary_sentence(
                None if unknown else ranked[0].fault_type, evidence, ranked[0].fault_type, records=history.height
            ),
        )

    def _loss_evidence(self, raw: np.ndarray, steps: np.ndarray, seen: Seen) -> SignalEvidence | None:
        """What the rules read in the loss, first of: a penalty it took on, its scale left, the KL coefficient it
        carries moved (None: none of them)."""
        if seen.penalty > self.penalty_bar:
            penalty = loss_penalty.term_evidence(raw, steps, PENALTY_WINDOW)
            if penalty is not None:
                return penalty
        if seen.scale > self.scale_bar and seen.scale_evidence is not None:
            return seen.scale_evidence
        return seen.coefficient_evidence

    def _track(self, run_id: str, cube: np.ndarray) -> np.ndarray:
        """``tracker.run_cube(cube)`` of one run, continued from the previous call's records when they are this
        cube's first ones (a live run's history only grows between alarms): a run with an alarm at every step
        would otherwise track its whole history again at each, quadratic in its length. The same numbers."""
        assert self.tracker is not None
        done = self._tracked.get(run_id)
        if done is not None:
            seen, state, tracked = done
            k = seen.shape[1]
            if k <= cube.shape[1] and np.array_equal(seen, cube[:, :k], equal_nan=True):
                state = state.copy()
                tracked = np.concatenate([tracked, self.tracker.extend(state, cube[:, k:])], axis=1)
                self._tracked = {run_id: (cube.copy(), state, tracked)}
                return tracked
        state = self.tracker.new_state(cube.shape[0])
        tracked = self.tracker.extend(state, cube)
        self._tracked = {run_id: (cube.copy(), state, tracked)}  # one run at a time: bounded memory
        return tracked

    def scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(type probabilities, abstain flags) for a matrix of diagnosis vectors (for evaluation)."""
        self._check()
        assert self.booster is not None
        x = mask_signals(x, self.feature_names, READ_SIGNALS)
        prob = self._predict(self.booster, x)
        _, fam = self._family_prob(prob)
        best = prob.argmax(1)
        unknown = (fam.max(1) < self.family_threshold) | (self._novelty(x, best) > self.novelty_thresholds[best])
        return prob, unknown

    def apply_seen(
        self, prob: np.ndarray, unknown: np.ndarray, seen: Sequence[Seen], invariants: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's rows after every rule over what each row's log shows (``invariants`` False: no trajectories, so
        no advantage invariant or sign is read), in order: invariants (with advantage signs), learning-rate jump,
        knobs pushed, lost or missing numbers, reward identity, completions unscored, identical completions scored
        apart, a reward of 0 or 1 that no longer is, a penalty in the loss, a KL coefficient that moved, completions
        that all ended before the length limit, a gradient gone or flowing, a reward identity that holds over several
        functions, advantage signs held, a run without a KL term (the rules that rule types out come last: nothing
        brings back what they removed)."""
        if invariants:
            prob, unknown = self.apply_invariants(prob, unknown, [s.broken for s in seen], [s.flipped for s in seen])
        prob, unknown = self.apply_schedule(prob, unknown, [s.jump for s in seen])
        prob, unknown = self.apply_pushed(prob, unknown, [s.pushed for s in seen])
        prob, unknown = self.apply_non_finite(prob, unknown, [s.lost for s in seen], [s.missing for s in seen])
        prob, unknown = self.apply_reward_identity(prob, unknown, [s.identity for s in seen])
        prob, unknown = self.apply_unscored(prob, unknown, [s.unscored for s in seen])
        prob, unknown = self.apply_repeats(prob, unknown, [s.repeats for s in seen])
        prob, unknown = self.apply_binary_reward(prob, unknown, [s.binary for s in seen])
        prob, unknown = self.apply_penalty(
            prob, unknown, [s.penalty for s in seen], [s.penalty_term for s in seen], [s.scale for s in seen]
        )
        prob, unknown = self.apply_kl_coefficient(
            prob, unknown, [s.coefficient for s in seen],
            [s.coefficient_evidence is not None and s.coefficient_evidence.configured for s in seen],
        )
        prob, unknown = self.apply_untruncated(prob, unknown, [s.untruncated for s in seen])
        prob, unknown = self.apply_gradient(prob, unknown, [s.gradient for s in seen], [s.clipped_all for s in seen])
        prob, unknown = self.apply_identity_holds(prob, unknown, [s.identity_holds for s in seen])
        if invariants:
            prob, unknown = self.apply_held_signs(prob, unknown, [s.flipped is False for s in seen])
        return self.apply_without_kl(prob, unknown, [s.no_kl for s in seen])

    def apply_invariants(
        self, prob: np.ndarray, unknown: np.ndarray, broken: list[list[str]], flipped: Sequence[bool | None] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run broke an armed advantage invariant (:func:`rftfm.fm.invariants.broken`), only the types
        whose fingerprint leads with it remain, in the model's proportions (equal where it gave them nothing), and
        the diagnosis does not abstain: a broken invariant is a bug in the advantage computation, seen, not guessed.
        Where the row's advantage signs were read (``flipped``, :func:`rftfm.fm.advantage_signs.reading`: True
        flipped, False held), only those of them that flip signs, or that do not, remain: which bug, seen too."""
        flips = np.array([FAULT_TYPES[t].flips_advantage_signs for t in self.classes])
        told = list(flipped) + [None] * (len(broken) - len(flipped))
        allowed = []
        for names, f in zip(broken, told):
            leads = np.array([bool(names) and FAULT_TYPES[t].signals[0][0] in names for t in self.classes])
            allowed.append(leads if f is None else leads & (flips if f else ~flips))
        return _only(prob, unknown, allowed)

    def apply_held_signs(
        self, prob: np.ndarray, unknown: np.ndarray, held: Sequence[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run held its advantage signs at its last judged record
        (:func:`rftfm.fm.advantage_signs.reading` False), the types that flip them are ruled out, as in
        :meth:`apply_untruncated`: a sign bug would have flipped some there (where an invariant broke too,
        :meth:`apply_invariants` has already left only the bugs that do not)."""
        flips = np.array([FAULT_TYPES[t].flips_advantage_signs for t in self.classes])
        return self._rule_out(prob, unknown, [flips & h for h in held])

    def apply_schedule(
        self, prob: np.ndarray, unknown: np.ndarray, jumps: list[float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run had its learning rate jump (:func:`rftfm.fm.schedule.recent_jump`, signed units), only
        the types that move the learning rate that way remain (the registry's ``learning_rate_push``), as for a broken
        invariant: a jump no schedule makes is a configuration pushed mid-run, seen in the log, not guessed."""
        pushes = [FAULT_TYPES[t].learning_rate_push for t in self.classes]
        allowed = [np.array([abs(j) > 1.0 and p == ("up" if j > 0 else "down") for p in pushes]) for j in jumps]
        return _only(prob, unknown, allowed)

    def apply_pushed(
        self, prob: np.ndarray, unknown: np.ndarray, pushed: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the trainer saw knobs pushed lately (:meth:`know_pushed`), the types that push one of them (the
        registry's ``pushed_knobs``) get half the mass on top of the model's half, and the row does not abstain: a
        configuration changed mid-run is seen in the trainer, but a fault may follow a change it did not cause, so
        ranked first, short of the certainty a halt may rest on (as for a penalty in the loss)."""
        knobs = [set(FAULT_TYPES[t].pushed_knobs) for t in self.classes]
        return _halfway(prob, unknown, [np.array([bool(k & set(names)) for k in knobs]) for names in pushed])

    def apply_non_finite(
        self, prob: np.ndarray, unknown: np.ndarray, lost: list[list[str]], missing: Sequence[list[str]] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run has lost a number its policy's weights produce (:func:`rftfm.fm.non_finite.lost_now`),
        only the types that make them non-finite (the registry's ``non_finite``) remain, as for a broken invariant:
        a NaN loss or gradient is seen in the log, not guessed. Where one is only ``missing`` from the row's record
        (one record: what an fp16 loss scaler's skipped step logs too), those types get half the mass on top of the
        model's half: ranked first, short of the certainty a halt may rest on (``halt_confidence``)."""
        blowups = np.array([FAULT_TYPES[t].non_finite for t in self.classes])
        prob, unknown = _only(prob, unknown, [blowups & bool(names) for names in lost])
        return _halfway(prob, unknown, [blowups & bool(names) for names in missing]) if missing else (prob, unknown)

    def apply_reward_identity(
        self, prob: np.ndarray, unknown: np.ndarray, broken: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run broke its reward identity (:func:`rftfm.fm.reward_identity.run_evidence`), only the types
        that break it (the registry's ``reward_identity``) remain: a reward function returning None is seen in the log,
        not guessed."""
        skipping = np.array([FAULT_TYPES[t].reward_identity for t in self.classes])
        return _only(prob, unknown, [skipping & b for b in broken])

    def apply_unscored(
        self, prob: np.ndarray, unknown: np.ndarray, seen: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where some of a row's last records had completions no reward function scored
        (:func:`rftfm.fm.unscored.run_evidence`), only the types that leave them (the registry's ``leaves_unscored``)
        remain: a verifier giving up is seen, not guessed."""
        leaving = np.array([FAULT_TYPES[t].leaves_unscored for t in self.classes])
        return _only(prob, unknown, [leaving & s for s in seen])

    def apply_repeats(
        self, prob: np.ndarray, unknown: np.ndarray, seen: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where some of a row's last records scored identical completions of one prompt differently
        (:func:`rftfm.fm.repeat_rewards.run_evidence`), only the types whose reward is then no function of the
        completion (the registry's ``scores_repeats_apart``) remain: a noisy verifier or a flaky tool is seen, not
        guessed."""
        apart = np.array([FAULT_TYPES[t].scores_repeats_apart for t in self.classes])
        return _only(prob, unknown, [apart & s for s in seen])

    def apply_binary_reward(
        self, prob: np.ndarray, unknown: np.ndarray, broken: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run has a reward function whose scores were 0 or 1 and no longer are
        (:func:`rftfm.fm.binary_reward.run_evidence`), only the types that do that (the registry's ``binary_reward``)
        remain: noise, a scale or completions left unscored are seen in the log, not guessed."""
        changing = np.array([FAULT_TYPES[t].binary_reward for t in self.classes])
        return _only(prob, unknown, [changing & b for b in broken])

    def apply_untruncated(
        self, prob: np.ndarray, unknown: np.ndarray, untruncated: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's record logs that (almost) no completion hit the length limit (:func:`untruncated_now`), the
        types whose fingerprint leads with the truncated ratio going up are ruled out, the others keep the model's
        proportions, and the row abstains when the best family left had less than the abstention threshold before
        (a length limit cannot starve a run whose completions all end before it)."""
        limited = np.array([FAULT_TYPES[t].length_limited for t in self.classes])
        return self._rule_out(prob, unknown, [limited & seen for seen in untruncated])

    def apply_gradient(
        self, prob: np.ndarray, unknown: np.ndarray, gradient: Sequence[bool | None], clipped_all: Sequence[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's record clipped every completion and left the policy no gradient (:func:`gradient_now`), the
        types that do that (the registry's ``stops_gradient``: a length limit that clips everything) get half the
        mass on top of the model's half, as for a penalty in the loss (a sign, not proof: a KL term can leave some
        gradient where every completion is clipped). Where its gradient flowed, half of their mass goes to their
        twins, the other types whose fingerprint leads with the truncated ratio (a limit too short, which leaves a
        gradient): the model's view between the two is otherwise a guess; the other types and the row's abstention
        stay as they were."""
        stops = np.array([FAULT_TYPES[t].stops_gradient for t in self.classes])
        prob, unknown = _halfway(prob, unknown, [stops & (g is False) & c for g, c in zip(gradient, clipped_all)])
        twins = ~stops & np.array([FAULT_TYPES[t].length_limited for t in self.classes])
        prob = prob.copy()
        for i, g in enumerate(gradient):
            moved = prob[i] * stops / 2
            if g is not True or not moved.any() or not twins.any():
                continue
            share = prob[i] * twins
            share = share / share.sum() if share.sum() > 0 else twins / twins.sum()
            prob[i] = prob[i] - moved + moved.sum() * share
        return prob, unknown

    def apply_identity_holds(
        self, prob: np.ndarray, unknown: np.ndarray, holds: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run holds its reward identity over two or more reward functions
        (:func:`rftfm.fm.reward_identity.reading`), the types that break it (the registry's ``reward_identity``: a
        reward function returning None for some completions) are ruled out, as in :meth:`apply_untruncated`: a function
        that skipped completions another one scored would have broken it at these very records."""
        skipping = np.array([FAULT_TYPES[t].reward_identity for t in self.classes])
        return self._rule_out(prob, unknown, [skipping & held for held in holds])

    def apply_without_kl(
        self, prob: np.ndarray, unknown: np.ndarray, no_kl: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's run has logged no KL up to its record (:func:`without_kl`: TRL with ``beta = 0``), the types
        that need a KL term (the registry's ``needs_kl``: a KL coefficient too large, one that never reaches the
        loss) are ruled out, as in :meth:`apply_untruncated`: there is no KL coefficient to misconfigure."""
        needs_kl = np.array([FAULT_TYPES[t].needs_kl for t in self.classes])
        return self._rule_out(prob, unknown, [needs_kl & none for none in no_kl])

    def apply_penalty(
        self,
        prob: np.ndarray,
        unknown: np.ndarray,
        penalties: list[float],
        terms: Sequence[str | None] | None = None,
        scales: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where a row's loss has taken on a penalty (:func:`penalty_now` above :attr:`penalty_bar`: what 1 % of the
        normal runs it was fitted on exceed, never below the detector channel's least threshold) whose term the row's
        ``terms`` names (:func:`rftfm.fm.loss_penalty.penalty_term`), the types that penalise that term (the
        registry's ``penalty_term``: a KL coefficient pushed up, an entropy bonus turned into a penalty) get half the
        mass on top of the model's half, as for a number missing from one record: ranked first, short of the
        certainty a halt may rest on. Where no term is named but the loss rose like a penalty, or left its scale
        (``scales``, :func:`rftfm.fm.loss_scale.reading`, above :attr:`scale_bar`, fitted alike), every type that
        lifts the loss does (the registry's ``lifts_loss``: a penalty, or a policy term whose advantages no longer
        sum to 0 or were scaled up)."""
        term_of = [FAULT_TYPES[t].penalty_term for t in self.classes]
        lifts = np.array([FAULT_TYPES[t].lifts_loss for t in self.classes])
        nothing = np.zeros(len(self.classes), dtype=bool)
        allowed = []
        for p, term, scale in zip(penalties, terms or [None] * len(penalties), scales or [math.nan] * len(penalties)):
            if term is not None and p > self.penalty_bar:
                allowed.append(np.array([t == term for t in term_of]))
            else:
                allowed.append(lifts if p > self.penalty_bar or scale > self.scale_bar else nothing)
        return _halfway(prob, unknown, allowed)

    def apply_kl_coefficient(
        self, prob: np.ndarray, unknown: np.ndarray, units: Sequence[float], configured: Sequence[bool] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where the KL coefficient a row's loss carries moved (:func:`rftfm.fm.kl_coefficient.reading` beyond 1 unit
        either way), the types that move it that way (the registry's ``kl_coefficient_move``: a beta pushed up, one
        that no longer reaches the loss) get half the mass on top of the model's half, as for a penalty in the loss:
        ranked first, short of the certainty a halt may rest on (a coefficient scheduled by design moves it too).
        Where the row's coefficient was read against the one its trainer is ``configured`` with, only those types
        remain (as for a broken invariant): a loss carrying e-fold less KL penalty than the trainer says is seen, not
        guessed."""
        moves = [FAULT_TYPES[t].kl_coefficient_move for t in self.classes]
        allowed = [np.array([abs(u) > 1.0 and m == ("up" if u > 0 else "down") for m in moves]) for u in units]
        told = list(configured) + [False] * (len(allowed) - len(configured))
        prob, unknown = _only(prob, unknown, [a & seen for a, seen in zip(allowed, told)])
        return _halfway(prob, unknown, [a & (not seen) for a, seen in zip(allowed, told)])

    def _rule_out(
        self, prob: np.ndarray, unknown: np.ndarray, excluded: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows with types ``excluded`` lose them, the others keep the model's proportions, and the row abstains
        when the best family left had less than the abstention threshold before; other rows are as they were."""
        prob, unknown = prob.copy(), unknown.copy()
        for i, out in enumerate(excluded):
            if not (prob[i] * out).any():
                continue
            left = np.where(out, 0.0, prob[i])
            unknown[i] |= float(self._family_prob(left[None])[1].max()) < self.family_threshold
            prob[i] = left / left.sum() if left.sum() > 0 else ~out / (~out).sum()
        return prob, unknown

    def evidence(
        self, raw: np.ndarray, steps: np.ndarray, tracked: np.ndarray, fault_type: str | None, limit: int = 6
    ) -> list[SignalEvidence]:
        """Signals that deviate now (a large recent innovation or an accumulated shift), each in the run's
        own terms: value over the last 3 records since the deviation began, level before it began, the step it
        began."""
        assert self.tracker is not None
        present = np.flatnonzero(steps > 0)
        names = self.tracker.names
        cols = {k: [names.index(f"{s}:{k}") for s in CUBE_SIGNALS] for k in ("z", "cusum_up", "cusum_down")}
        z, up, down = (tracked[present][:, cols[k]] for k in ("z", "cusum_up", "cusum_down"))
        values = raw[present]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            recent = np.nanmean(z[-3:], axis=0)
        shift = np.fmax(np.nan_to_num(up[-1]), np.nan_to_num(down[-1]))
        strength = np.fmax(np.abs(np.nan_to_num(recent)), shift / CUSUM_PER_Z)
        expected_signals = [s for s, _ in FAULT_TYPES[fault_type].signals] if fault_type in FAULT_TYPES else []
        items = []
        for j, name in enumerate(CUBE_SIGNALS):
            sig = SIGNALS.get(name)
            if sig is None or strength[j] < EVIDENCE_Z:
                continue
            dup = sig.duplicates
            if dup is not None and strength[CUBE_SIGNALS.index(dup)] >= EVIDENCE_Z:
                continue  # shown once, under the step metric it repeats
            rising = up[-1, j] > down[-1, j] if shift[j] > 0 else recent[j] > 0
            start = _deviation_start(up[:, j] if rising else down[:, j], z[:, j], 1.0 if rising else -1.0)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                before = float(np.nanmedian(values[max(0, start - 5) : start, j])) if start > 0 else math.nan
                now = float(np.nanmean(values[max(start, len(values) - 3) :, j]))  # since it began, not before
            ratio = now / before if math.isfinite(before) and abs(before) > 1e-12 and math.isfinite(now) else None
            items.append(
                SignalEvidence(
                    signal=name,
                    direction="up" if rising else "down",
                    value=_round(now),
                    expected=_round(before),
                    z=_round(float(recent[j])) if np.isfinite(recent[j]) else None,
                    ratio=_round(ratio),
                    since_step=int(steps[present[start]]),
                )
            )
        order = {e.signal: strength[CUBE_SIGNALS.index(e.signal)] for e in items}
        items.sort(key=lambda e: (e.signal not in expected_signals, -order[e.signal]))
        return items[:limit]

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        self._check()
        assert self.booster is not None and self.tracker is not None
        return {
            "format": "rftfm-diagnoser",
            "format_version": FORMAT_VERSION,
            "classes": self.classes,
            "feature_names": self.feature_names,
            "family_threshold": self.family_threshold,
            "penalty_bar": self.penalty_bar if math.isfinite(self.penalty_bar) else None,
            "scale_bar": self.scale_bar if math.isfinite(self.scale_bar) else None,
            "novelty_thresholds": [float(v) if math.isfinite(v) else None for v in self.novelty_thresholds],
            "novelty_labels": self.novelty_labels.tolist(),
            "novelty_scale": [round(float(v), 6) for v in self.novelty_scale],
            "novelty_reference": self.novelty_reference.tolist(),
            "novelty_groups": _group_codes(self._reference_groups),
            "info": self.info,
            "signals": list(CUBE_SIGNALS),
            "prior_noise": [None if not math.isfinite(v) else float(v) for v in self.tracker.prior],
            "task_levels": self.tracker.config.task_levels,
            "lightgbm_model": self.booster.model_to_string(),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Diagnoser":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != "rftfm-diagnoser":
            raise ValueError(f"{path} is not an rftfm diagnoser file")
        if data.get("format_version") != FORMAT_VERSION or data.get("signals") != list(CUBE_SIGNALS):
            raise ValueError(f"{path} was written by another diagnoser version; re-fit it (`rftfm fit diagnoser`)")
        self = cls()
        self.classes = list(data["classes"])
        self.feature_names = list(data["feature_names"])
        if self.feature_names != diagnosis_feature_names():
            raise ValueError(f"{path} reads other features than this diagnoser computes; re-fit it")
        self.family_threshold = float(data["family_threshold"])
        bar = data.get("penalty_bar")  # an artifact fitted before the rule: off
        self.penalty_bar = math.inf if bar is None else float(bar)
        bar = data.get("scale_bar")  # an artifact fitted before the rule: off
        self.scale_bar = math.inf if bar is None else float(bar)
        self.novelty_thresholds = np.array(
            [math.inf if v is None else v for v in data["novelty_thresholds"]], dtype=float
        )
        self.novelty_labels = np.array(data["novelty_labels"], dtype=int)
        self.novelty_scale = np.array(data["novelty_scale"], dtype=float)
        self.novelty_reference = np.array(data["novelty_reference"], dtype=float)
        self._reference_groups = np.array(data.get("novelty_groups", []))
        self.info = dict(data.get("info", {}))
        prior = np.array([np.nan if v is None else v for v in data["prior_noise"]], dtype=float)
        # an artifact written before task levels were read was fitted without them
        self.tracker = DynamicsTracker(CUBE_SIGNALS, prior, TrackerConfig(task_levels=bool(data.get("task_levels"))))
        self.booster = lgb.Booster(model_str=data["lightgbm_model"])
        return self

    @classmethod
    def load_default(cls) -> "Diagnoser":
        if not DEFAULT_ARTIFACT.exists():
            raise FileNotFoundError(f"no default diagnoser at {DEFAULT_ARTIFACT}; train one with `rftfm fit diagnoser`")
        return cls.load(DEFAULT_ARTIFACT)


def _only(prob: np.ndarray, unknown: np.ndarray, allowed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows with some type ``allowed`` keep only those, in the model's proportions (equal where it gave them
    nothing), and do not abstain; other rows are as they were."""
    prob, unknown = prob.copy(), unknown.copy()
    for i, keep in enumerate(allowed):
        if keep.any():
            kept = np.where(keep, prob[i], 0.0)
            prob[i] = kept / kept.sum() if kept.sum() > 0 else keep / keep.sum()
            unknown[i] = False
    return prob, unknown


def _halfway(prob: np.ndarray, unknown: np.ndarray, allowed: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows with some type ``allowed``: halfway between the model's probabilities and :func:`_only`'s, and do not
    abstain (a sign, not proof); other rows are as they were."""
    only, _ = _only(prob, unknown, list(allowed))
    rows = np.array([a.any() for a in allowed])
    return np.where(rows[:, None], (prob + only) / 2, prob), unknown & ~rows


def seen_broken(raw: np.ndarray, steps: np.ndarray, invariants_known: bool, on_policy_known: bool) -> list[str]:
    """What one run's records (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)) show broken, seen rather than guessed:
    the armed advantage invariants its last record breaks (:func:`rftfm.fm.invariants.broken`) and, in a run known
    on-policy, a recent clip ratio above 0 (:func:`rftfm.fm.on_policy.recently_clipped`), like them."""
    broken = invariants.broken(raw, steps, invariants_known)
    if on_policy_known and on_policy.recently_clipped(raw[:, CUBE_SIGNALS.index(on_policy.SIGNAL)], steps):
        broken = [*broken, on_policy.SIGNAL]
    return broken


def untruncated_now(raw: np.ndarray, steps: np.ndarray) -> bool:
    """Whether one run's last present record (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)) logs a truncated ratio
    at or below :data:`UNTRUNCATED` (False where it logs none)."""
    present = np.flatnonzero(steps > 0)
    return bool(present.size) and bool(raw[present[-1], TRUNCATED] <= UNTRUNCATED)  # (NaN compares False)


def gradient_now(raw: np.ndarray, steps: np.ndarray) -> tuple[bool | None, bool]:
    """Whether one run's last present record (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)) had a gradient: True
    where its grad norm is above :data:`NO_GRADIENT` of the run's median before it (above 0 with none before), False
    at or below, None where it logs none; and whether it clipped every completion (truncated ratio at or above
    :data:`CLIPPED_ALL`)."""
    present = np.flatnonzero(steps > 0)
    if not present.size:
        return None, False
    norm = float(raw[present[-1], GRAD_NORM])
    clipped_all = bool(raw[present[-1], TRUNCATED] >= CLIPPED_ALL)  # (NaN compares False)
    if not math.isfinite(norm):
        return None, clipped_all
    before = raw[present[:-1], GRAD_NORM]
    before = before[np.isfinite(before) & (before > 0)]
    floor = NO_GRADIENT * float(np.median(before)) if before.size else 0.0
    return norm > floor, clipped_all


def penalty_now(raw: np.ndarray, steps: np.ndarray) -> float:
    """The loss-penalty statistic over :data:`PENALTY_WINDOW` records, its largest value over one run's last
    :data:`~rftfm.fm.loss_penalty.WINDOW` records (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,); NaN: none judged)."""
    stats = loss_penalty.cube_stats(raw[None], steps[None], PENALTY_WINDOW)[0][steps > 0][-loss_penalty.WINDOW :]
    return float(np.nanmax(stats)) if np.isfinite(stats).any() else math.nan


def without_kl(raw: np.ndarray, steps: np.ndarray) -> bool:
    """Whether one run (``raw`` (S, len(CUBE_SIGNALS)), ``steps`` (S,)) has logged records and a KL at none of them
    (no KL term: TRL logs none with ``beta = 0``)."""
    present = np.flatnonzero(steps > 0)
    return bool(present.size) and not bool(np.isfinite(raw[present, KL]).any())


def jump_evidence(lr: np.ndarray, steps: np.ndarray, at: int | None) -> list[SignalEvidence]:
    """The learning rate's jump at record ``at`` (None: no jump) against the record with a learning rate before it."""
    if at is None:
        return []
    before = [i for i in range(at) if steps[i] > 0 and np.isfinite(lr[i])]
    if not before:
        return []
    return [schedule.jump_evidence(float(lr[at]), float(lr[before[-1]]), int(steps[before[-1]]))]


def invariant_evidence(raw: np.ndarray, steps: np.ndarray, broken: list[str]) -> list[SignalEvidence]:
    """Each broken invariant as evidence, whether this tier tracks it or not: its last value against the 0 a healthy
    run holds, since the first step of the records breaking it now."""
    present = np.flatnonzero(steps > 0)
    items = []
    for name in broken:
        values = raw[present, CUBE_SIGNALS.index(name)]
        if name == on_policy.SIGNAL:  # clipped now and then: the latest clip ratio above 0, since the first one
            clipped = np.flatnonzero(np.nan_to_num(values) > on_policy.LIMIT)
            items.append(SignalEvidence(signal=name, direction="up", value=_round(float(values[clipped[-1]])),
                                        expected=0.0, since_step=int(steps[present[clipped[0]]])))
            continue
        with np.errstate(invalid="ignore"):
            held = values <= invariants.INVARIANT_LIMITS[name]  # a record with nothing to judge (NaN) did not hold it
        start = int(np.flatnonzero(held)[-1]) + 1 if held.any() else 0
        items.append(SignalEvidence(signal=name, direction="up", value=_round(float(values[-1])), expected=0.0,
                                    since_step=int(steps[present[start]])))
    return items


def _deviation_start(cusum: np.ndarray, z: np.ndarray, sign: float) -> int:
    """Index of the record where the current deviation began: the start of the accumulated shift, else of
    the current run of large innovations (one quiet record allowed)."""
    last = len(cusum) - 1
    if cusum[last] > 0:
        start = last
        while start > 0 and cusum[start - 1] > 0:
            start -= 1
        return start
    start, gap = last, 0
    for i in range(last, -1, -1):
        if np.isfinite(z[i]) and sign * z[i] >= SINCE_Z:
            start, gap = i, 0
        else:
            gap += 1
            if gap > 1:
                break
    return start


def _group_codes(groups: np.ndarray) -> list[int]:
    """Run ids of the reference rows as small integers (only equality matters)."""
    codes: dict[str, int] = {}
    return [codes.setdefault(str(g), len(codes)) for g in groups]


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


def describe(e: SignalEvidence) -> str:
    """One piece of evidence in the run's own terms, e.g. ``KL 0.48 (x40 vs 0.012 before step 37)``."""
    if e.non_finite:
        return non_finite.describe(e)
    if e.reward_identity:
        return reward_identity.describe(e)
    if e.signal == unscored.SIGNAL:
        return unscored.describe(e)
    if e.signal == repeat_rewards.SIGNAL:
        return repeat_rewards.describe(e)
    if e.signal == advantage_signs.SIGNAL:
        return advantage_signs.describe(e)
    if e.binary_mean is not None:
        return binary_reward.describe(e)
    if e.penalty_term is not None:
        return loss_penalty.describe_term(e)
    if e.per_kl:
        return kl_coefficient.describe(e)
    name = label(e.signal)
    if e.value is None:
        return f"{name} {e.direction}" if e.measured else name
    if not e.measured:
        return f"{name} {e.value:.3g} (no baseline yet)"
    if e.expected is None:
        return f"{name} {e.value:.3g} ({e.direction} since step {e.since_step})"
    if e.ratio is not None and e.ratio > 0 and (e.ratio >= 1.5 or e.ratio <= 1 / 1.5):
        change = f"x{e.ratio:.2g}"
    else:
        change = f"{e.value - e.expected:+.3g}"
    return f"{name} {e.value:.3g} ({change} vs {e.expected:.3g} before step {e.since_step})"


#: fewer logged records than this: the run has no baseline of its own to name a deviation against
FIRST_RECORDS = 3


def summary_sentence(
    fault_type: str | None, evidence: list[SignalEvidence], closest: str | None = None, records: int | None = None
) -> str:
    """One actionable sentence, e.g. 'reward_hacking since step 11: train reward +0.30 while eval accuracy -0.20'.
    ``records``: how many logged records the diagnosis read (a run's first ones have no baseline yet)."""
    head = fault_type or "unknown fault"
    if not evidence:
        early = records is not None and records < FIRST_RECORDS
        tail = (
            f"{records} logged record{'s' if records != 1 else ''}, no baseline of the run's own yet"
            if early
            else "no signal far from the run's own baseline"
        )
        return f"{head}: {tail}" + (f" (closest known: {closest})" if fault_type is None and closest else "")
    top = evidence[:3]
    since = (
        min(e.since_step for e in top if e.since_step is not None)
        if any(e.since_step is not None for e in top)
        else None
    )
    parts = [describe(e) for e in top]
    text = parts[0] if len(parts) == 1 else f"{parts[0]} while " + ", ".join(parts[1:])
    sentence = f"{head}" + (f" since step {since}" if since is not None else "") + f": {text}"
    if fault_type is None and closest:
        sentence += f" (closest known: {closest})"
    return sentence


__all__ = ["Diagnoser", "DEFAULT_ARTIFACT", "summary_sentence", "describe", "KINDS", "TRAIN_OFFSETS"]
