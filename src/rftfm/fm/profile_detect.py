"""RFT-FM anomaly detection: streaming, step-conditional, calibrated on normal runs.

How it decides, per step of a run:

1. the step's signals — the shared features (:mod:`rftfm.fm.features`: train-step metrics
   and trajectory aggregates; never labels, learning rate or step time) plus three derived
   ones (:data:`DERIVED`; one is the one-sided stall signal, :class:`FlatStreak`) — are
   standardised against the normal profile of that step
   (:mod:`rftfm.fm.profile`): ``z = (x - center) / scale``; missing signals are skipped
   (their state is carried over), never imputed as anomalies;
2. a two-sided CUSUM of ``z`` per signal accumulates evidence, so a large jump alarms at
   once and a subtle persistent drift alarms after a few steps (``|z|`` and an EWMA of ``z``
   are available as extra statistics, ``DetectorConfig.channels``; on our benchmark they
   only added false alarms on normal runs, so they are off by default);
3. each statistic of each signal is divided by its own normaliser (its extrapolated 1 %
   tail of run maxima on out-of-sample normal runs) so noisy signals do not dominate; the
   step's score is the maximum over signals;
4. an alarm is raised at every step whose score exceeds the threshold: the run-maximum
   score exceeded by ``false_alarm_target`` of out-of-sample normal runs (cross-fitted over
   the normal training runs, tail extrapolated). Faulty runs are never used to fit or
   calibrate anything.

Configurations: a profile per (task group, model size) when at least ``min_config_runs``
normal runs of it exist, else the global profile (all configurations pooled), whose
normalisers and threshold are calibrated by leaving one task group out and one model size
out, i.e. as for a configuration never seen. Batch size: trajectory aggregates are means
and rates, which do not depend on the number of trajectories per step (their noise does;
the global profile's wider scale absorbs it).

Streaming (:meth:`Detector.observe`) costs O(signals) per step plus one pass over the
step's trajectories; :meth:`Detector.score_run` runs the same update offline and gives the
same result; :meth:`Detector.score_cube` is the vectorised form used for evaluation.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from rftfm.fm.cube import CUBE_SIGNALS as SIGNALS
from rftfm.fm.cube import (
    EVAL_INDEX,
    FLAT_INDEX,
    UP_ONLY,
    FlatStreak,
    features_matrix,
    record_row,
    runs_cube,
    tail_threshold,
)
from rftfm.fm.features import FEATURES, step_features
from rftfm.fm.profile import GLOBAL_KEY, StepProfile, Transform, config_key, fit_step_profile, scale_floor
from rftfm.fm.types import Alarm, SignalEvidence
from rftfm.records import StepRecord, TrajectoryRecord

ARTIFACT_VERSION = 1
DEFAULT_ARTIFACT = Path(__file__).parent / "artifacts" / "profile_detector.json"
CHANNELS: tuple[str, ...] = ("z", "ewma", "cusum")
#: Lower bounds of the per-feature normalisers (a feature that never moves in normal runs
#: must still move by this much, in robust standard deviations, to count).
CHANNEL_FLOORS = np.array([4.0, 2.0, 4.0])
NORMAL_KINDS = ("normal", "control")
EVIDENCE_FRACTION = 0.5  # evidence: signals whose statistic reaches half the threshold
MAX_EVIDENCE = 5


@dataclass
class DetectorConfig:
    window: int = 1  # steps pooled on each side when profiling a step
    min_config_runs: int = 8  # normal runs needed for a per-configuration profile
    cusum_k: float = 0.5  # CUSUM allowance, in robust standard deviations
    ewma_lambda: float = 0.3
    z_clip: float = 50.0
    false_alarm_target: float = 0.005  # fraction of normal runs allowed to alarm (out of sample)
    threshold_margin: float = 1.0
    normaliser_quantile: float = 0.9
    tail_fraction: float = 0.2  # top fraction of normal run maxima used to fit the tail
    normaliser_tail: float | None = 0.01  # per-statistic tail quantile (None: plain normaliser_quantile)
    folds: int = 5
    channels: tuple[str, ...] = ("cusum",)  # statistics used (subset of CHANNELS; z and EWMA added false alarms)
    seed: int = 0


@dataclass
class Calibration:
    """Normalisers (channels x features) and threshold for one profile level."""

    norm: np.ndarray  # (C, F)
    threshold: float
    normal_runs: int  # out-of-sample normal runs it was calibrated on


@dataclass
class RunState:
    """Streaming state of one run (arrays over features)."""

    run_id: str
    key: str
    ewma: np.ndarray
    cplus: np.ndarray
    cminus: np.ndarray
    plus_since: np.ndarray
    minus_since: np.ndarray
    last_step: int = 0
    in_alarm: bool = False
    last_score: float = 0.0
    flat: FlatStreak = field(default_factory=lambda: FlatStreak.new(1))

    @classmethod
    def new(cls, run_id: str, key: str, n_runs: int = 1) -> "RunState":
        zeros = np.zeros((n_runs, len(SIGNALS)))
        return cls(
            run_id,
            key,
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            zeros.copy(),
            flat=FlatStreak.new(n_runs),
        )


class ProfileDetector:
    """Step-conditional robust profile + EWMA / CUSUM statistics, calibrated on normal runs."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.transform: Transform | None = None
        self.profiles: dict[str, StepProfile] = {}
        self.calibration: dict[str, Calibration] = {}  # "config" and "global" levels
        self.fit_info: dict[str, Any] = {}
        self._state: RunState | None = None
        self.skipped_steps = 0

    # ------------------------------------------------------------------ fitting
    def fit(self, runs: pl.DataFrame, features: pl.DataFrame) -> "ProfileDetector":
        """Fit profiles and calibrate thresholds on the normal (and control) runs of ``runs``."""
        normal = runs
        if "control_or_fault" in runs.columns:
            normal = runs.filter(pl.col("control_or_fault").is_in(NORMAL_KINDS) | pl.col("control_or_fault").is_null())
        normal = normal.filter(pl.col("run_id").is_in(features["run_id"].unique().to_list()))
        if normal.height < 3:
            raise ValueError(f"need at least 3 normal runs to fit a detector, got {normal.height}")
        run_ids = normal["run_id"].to_list()
        keys = [config_key(t, s) for t, s in zip(_col(normal, "task_group"), _col(normal, "model_size"))]
        raw, _ = runs_cube(features, run_ids)
        self.transform = Transform.fit(raw.reshape(-1, raw.shape[-1]), SIGNALS)
        cube = self.transform.apply(raw)
        self.floor = scale_floor(cube.reshape(-1, cube.shape[-1]), SIGNALS)

        self.profiles = self._fit_profiles(cube, keys)
        config_stats, global_stats = self._cross_fit(cube, keys)
        self.calibration = {"config": self._calibrate(config_stats), "global": self._calibrate(global_stats)}
        self.fit_info = {
            "normal_runs": len(run_ids),
            "configs": {k: keys.count(k) for k in sorted(set(keys))},
            "steps": int(cube.shape[1]),
        }
        return self

    def _fit_profiles(
        self, cube: np.ndarray, keys: list[str], config_keys: set[str] | None = None
    ) -> dict[str, StepProfile]:
        """Global profile plus one per configuration in ``config_keys`` (default: those with enough runs)."""
        profiles = {GLOBAL_KEY: fit_step_profile(cube, self.floor, self.config.window)}
        if config_keys is None:
            config_keys = {k for k in set(keys) if keys.count(k) >= self.config.min_config_runs}
        for key in sorted(config_keys):
            members = [i for i, k in enumerate(keys) if k == key]
            if len(members) >= 2:
                profiles[key] = fit_step_profile(cube[members], self.floor, self.config.window)
        return profiles

    def _cross_fit(self, cube: np.ndarray, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Out-of-sample run-maximum channel values (runs, C, F): K-fold (configuration level) and
        leave-one-task-group-out / leave-one-model-size-out (global level)."""
        n = cube.shape[0]
        rng = np.random.default_rng(self.config.seed)
        fold = np.empty(n, dtype=int)
        for key in sorted(set(keys)):  # stratified by configuration
            members = np.array([i for i, k in enumerate(keys) if k == key])
            fold[members[rng.permutation(len(members))]] = (
                np.arange(len(members)) + rng.integers(self.config.folds)
            ) % self.config.folds
        config_stats = np.zeros((n, len(CHANNELS), len(SIGNALS)))
        for f in range(self.config.folds):
            test = np.flatnonzero(fold == f)
            train = np.flatnonzero(fold != f)
            if not len(test) or len(train) < 2:
                continue
            # same configuration set as deployment, each fitted on this fold's runs
            profiles = self._fit_profiles(cube[train], [keys[i] for i in train], set(self.profiles) - {GLOBAL_KEY})
            for i in test:
                profile = profiles.get(keys[i], profiles[GLOBAL_KEY])
                config_stats[i] = self._run_max_channels(cube[i : i + 1], profile)[0]
        # global level = what an unseen configuration meets: leave one task group out, and
        # leave one model size out (pooled); with a single value on both axes, leave a config out
        global_parts = []
        for axis in (0, 1):
            values = [k.split("|")[axis] for k in keys]
            if len(set(values)) < 2:
                continue
            stats = np.zeros_like(config_stats)
            for value in sorted(set(values)):
                test = np.array([i for i, v in enumerate(values) if v == value])
                train = np.array([i for i, v in enumerate(values) if v != value])
                profile = fit_step_profile(cube[train], self.floor, self.config.window)
                stats[test] = self._run_max_channels(cube[test], profile)
            global_parts.append(stats)
        if not global_parts:
            global_parts.append(config_stats)
        global_stats = np.concatenate(global_parts)
        return config_stats, global_stats

    def _run_max_channels(self, cube: np.ndarray, profile: StepProfile) -> np.ndarray:
        channels = self._channels_cube(cube, profile)  # (R, S, C, F)
        return np.nanmax(np.where(np.isfinite(channels), channels, 0.0), axis=1)

    def _calibrate(self, stats: np.ndarray) -> Calibration:
        """Per-statistic normalisers and the threshold, both from out-of-sample normal run maxima.

        Each statistic is divided by its own extrapolated 1 % tail (``normaliser_tail``), so
        signals of different noise compete fairly in the maximum. The threshold extrapolates the out-of-sample
        run-maximum scores of normal runs to the
        false-alarm target with a peaks-over-threshold exponential tail (the maximum of many
        statistics is in the Gumbel domain), never below the largest observed normal score.
        """
        cfg = self.config
        if cfg.normaliser_tail is None:
            norm = np.quantile(stats, cfg.normaliser_quantile, axis=0)  # (C, F)
        else:  # each statistic's own extrapolated tail quantile (equalises heavy-tailed signals)
            norm = np.array(
                [
                    [
                        tail_threshold(stats[:, c, f], cfg.normaliser_tail, cfg.tail_fraction, cap=False)
                        for f in range(stats.shape[2])
                    ]
                    for c in range(stats.shape[1])
                ]
            )
        norm = np.maximum(norm, CHANNEL_FLOORS[:, None])
        norm[[c not in cfg.channels for c in CHANNELS]] = np.inf  # statistics switched off
        run_scores = (stats / norm).reshape(stats.shape[0], -1).max(axis=1)
        return Calibration(
            norm,
            tail_threshold(run_scores, cfg.false_alarm_target, cfg.tail_fraction) * cfg.threshold_margin,
            int(stats.shape[0]),
        )

    # ------------------------------------------------------------------ scoring core
    def _z(self, y: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
        z = (y - center) / scale
        z = np.where(UP_ONLY & (z < 0), 0.0, z)  # (NaN stays NaN: a missing signal is skipped)
        return np.clip(z, -self.config.z_clip, self.config.z_clip)

    def _advance(self, state: RunState, z: np.ndarray, step: int) -> np.ndarray:
        """One step for (R, F) z-scores (NaN = missing); returns channels (R, C, F)."""
        cfg = self.config
        present = np.isfinite(z)
        zz = np.where(present, z, 0.0)
        ewma = np.where(present, (1 - cfg.ewma_lambda) * state.ewma + cfg.ewma_lambda * zz, state.ewma)
        cplus = np.where(present, np.maximum(0.0, state.cplus + zz - cfg.cusum_k), state.cplus)
        cminus = np.where(present, np.maximum(0.0, state.cminus - zz - cfg.cusum_k), state.cminus)
        state.plus_since = np.where((state.cplus == 0) & (cplus > 0), step, state.plus_since)
        state.minus_since = np.where((state.cminus == 0) & (cminus > 0), step, state.minus_since)
        state.ewma, state.cplus, state.cminus = ewma, cplus, cminus
        return np.stack([np.abs(zz), np.abs(ewma), np.maximum(cplus, cminus)], axis=1)

    def _channels_cube(self, cube: np.ndarray, profile: StepProfile) -> np.ndarray:
        """Channels (R, S, C, F) for a transformed cube (R, S, F)."""
        state = RunState.new("", "", cube.shape[0])
        out = np.zeros((cube.shape[0], cube.shape[1], len(CHANNELS), len(SIGNALS)))
        for s in range(cube.shape[1]):
            center, scale = profile.at(s + 1)
            out[:, s] = self._advance(state, self._z(cube[:, s], center, scale), s + 1)
        return out

    def _lookup(self, task_group: str | None, model_size: str | None) -> tuple[str, StepProfile, Calibration]:
        key = config_key(task_group, model_size)
        if key in self.profiles and key != GLOBAL_KEY:
            return key, self.profiles[key], self.calibration["config"]
        return GLOBAL_KEY, self.profiles[GLOBAL_KEY], self.calibration["global"]

    def _require_fitted(self) -> None:
        if self.transform is None or not self.profiles:
            raise RuntimeError("detector is not fitted: call fit() or load()")

    def score_cube(
        self, raw: np.ndarray, steps: np.ndarray, task_group: str | None, model_size: str | None
    ) -> tuple[np.ndarray, float]:
        """Scores (R, S) of a raw feature cube (R, S, F) with step numbers (R, S) (0 = absent), and the threshold.

        Steps must be consecutive from 1 in every run (as :func:`runs_cube` builds them).
        """
        self._require_fitted()
        _, profile, cal = self._lookup(task_group, model_size)
        channels = self._channels_cube(self.transform.apply(raw), profile)
        scores = (channels / cal.norm).reshape(*channels.shape[:2], -1).max(axis=2)
        return np.where(steps > 0, scores, np.nan), cal.threshold

    # ------------------------------------------------------------------ streaming
    def reset(self, run_id: str, task_group: str | None = None, model_size: str | None = None) -> None:
        """Start streaming run ``run_id`` (selects its configuration's profile)."""
        self._require_fitted()
        key, _, _ = self._lookup(task_group, model_size)
        self._state = RunState.new(run_id, key)

    @property
    def state(self) -> RunState | None:
        return self._state

    def observe(self, step: StepRecord, trajectories: Sequence[TrajectoryRecord] = ()) -> Alarm | None:
        """Update with one train step; an :class:`Alarm` while the score exceeds the threshold."""
        return self.observe_features(step.run_id, step.step, step_features(step, trajectories))

    def observe_features(self, run_id: str, step: int, features: dict[str, float | None]) -> Alarm | None:
        """:meth:`observe` for a precomputed feature dict (as :func:`step_features` returns)."""
        self._require_fitted()
        if self._state is None or self._state.run_id != run_id:
            self.reset(run_id)
        state = self._state
        if step <= state.last_step:  # a repeated or rolled-back step: count it, keep the state
            self.skipped_steps += 1
            return None
        raw = record_row(features)
        raw[:, FLAT_INDEX] = state.flat.advance(raw[:, EVAL_INDEX])
        profile = self.profiles.get(state.key, self.profiles[GLOBAL_KEY])
        cal = self.calibration["config" if state.key != GLOBAL_KEY else "global"]
        center, scale = profile.at(step)
        z = self._z(self.transform.apply(raw), center, scale)
        channels = self._advance(state, z, step)[0]  # (C, F)
        state.last_step = step
        ratios = channels / cal.norm
        score = float(ratios.max())
        state.last_score = score
        state.in_alarm = score > cal.threshold
        if not state.in_alarm:
            return None
        return Alarm(
            run_id=run_id,
            step=step,
            score=score,
            threshold=cal.threshold,
            evidence=self._evidence(state, ratios, raw[0], z[0], center, cal.threshold),
        )

    def _evidence(
        self, state: RunState, ratios: np.ndarray, raw: np.ndarray, z: np.ndarray, center: np.ndarray, threshold: float
    ) -> list[SignalEvidence]:
        per_feature = ratios.max(axis=0)
        expected = self.transform.invert(center)
        order = [i for i in np.argsort(-per_feature) if per_feature[i] >= EVIDENCE_FRACTION * threshold][:MAX_EVIDENCE]
        out = []
        for i in order:
            channel = int(np.argmax(ratios[:, i]))
            if channel == 2:
                up = state.cplus[0, i] >= state.cminus[0, i]
            elif channel == 1:
                up = state.ewma[0, i] >= 0
            else:
                up = (z[i] if math.isfinite(z[i]) else state.ewma[0, i]) >= 0
            since = state.plus_since[0, i] if up else state.minus_since[0, i]
            value = raw[i] if math.isfinite(raw[i]) else None
            exp = float(expected[i]) if math.isfinite(expected[i]) else None
            out.append(
                SignalEvidence(
                    signal=SIGNALS[i],
                    direction="up" if up else "down",
                    value=value,
                    expected=exp,
                    z=float(z[i]) if math.isfinite(z[i]) else None,
                    ratio=(value / exp) if value is not None and exp is not None and abs(exp) > 1e-6 else None,
                    since_step=int(since) if since > 0 else None,
                )
            )
        return out

    # ------------------------------------------------------------------ offline
    def score_run(
        self, run_features: pl.DataFrame, task_group: str | None = None, model_size: str | None = None
    ) -> list[Alarm]:
        """Alarms of one run's feature frame (``step`` + feature columns), exactly as streaming gives them."""
        saved, skipped = self._state, self.skipped_steps
        run_id = str(run_features["run_id"][0]) if "run_id" in run_features.columns and run_features.height else "run"
        self.reset(run_id, task_group, model_size)
        alarms = []
        frame = run_features.sort("step")
        x = features_matrix(frame)
        for step, row in zip(frame["step"].to_list(), x):
            alarm = self.observe_features(
                run_id, int(step), {f: (None if math.isnan(v) else float(v)) for f, v in zip(FEATURES, row)}
            )
            if alarm is not None:
                alarms.append(alarm)
        self._state, self.skipped_steps = saved, skipped
        return alarms

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {
            "format": "rftfm-detector",
            "version": ARTIFACT_VERSION,
            "features": list(SIGNALS),
            "channels": list(CHANNELS),
            "config": asdict(self.config),
            "fit_info": self.fit_info,
            "transform": {
                "log_scale": self.transform.log_scale.tolist(),
                "magnitude": _floats(self.transform.magnitude),
            },
            "floor": _floats(self.floor),
            "profiles": {
                k: {"center": _floats(p.center), "scale": _floats(p.scale), "runs": p.runs}
                for k, p in self.profiles.items()
            },
            "calibration": {
                k: {"norm": _floats(c.norm), "threshold": c.threshold, "normal_runs": c.normal_runs}
                for k, c in self.calibration.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProfileDetector":
        if data.get("format") != "rftfm-detector":
            raise ValueError("not an rftfm detector artifact")
        if data.get("version") != ARTIFACT_VERSION:
            raise ValueError(
                f"detector artifact version {data.get('version')} is not supported (expected {ARTIFACT_VERSION})"
            )
        if list(data["features"]) != list(SIGNALS):
            raise ValueError("detector artifact was trained on a different feature list; re-fit it")
        det = cls(DetectorConfig(**{**data["config"], "channels": tuple(data["config"].get("channels", CHANNELS))}))
        det.transform = Transform(
            np.array(data["transform"]["log_scale"], dtype=bool), _array(data["transform"]["magnitude"])
        )
        det.floor = _array(data["floor"])
        det.profiles = {
            k: StepProfile(_array(p["center"]), _array(p["scale"]), int(p["runs"])) for k, p in data["profiles"].items()
        }
        det.calibration = {
            k: Calibration(np.nan_to_num(_array(c["norm"]), nan=np.inf), float(c["threshold"]), int(c["normal_runs"]))
            for k, c in data["calibration"].items()
        }  # null normaliser = statistic switched off
        det.fit_info = data.get("fit_info", {})
        return det

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ProfileDetector":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def load_default(cls) -> "ProfileDetector":
        """The artifact shipped with the package (trained on the full preset's train split)."""
        if not DEFAULT_ARTIFACT.exists():
            raise FileNotFoundError(f"no default detector artifact at {DEFAULT_ARTIFACT}; run `rftfm fit detector`")
        return cls.load(DEFAULT_ARTIFACT)


def _col(frame: pl.DataFrame, name: str) -> list[Any]:
    return frame[name].to_list() if name in frame.columns else [None] * frame.height


def _floats(a: np.ndarray) -> Any:
    """Nested lists with None for NaN (JSON has no NaN), 6 significant digits."""
    return np.vectorize(lambda v: None if not math.isfinite(v) else float(f"{v:.6g}"), otypes=[object])(
        np.asarray(a, dtype=float)
    ).tolist()


def _array(data: Any) -> np.ndarray:
    return np.array(data, dtype=float)  # None -> nan
