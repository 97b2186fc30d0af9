"""Detection evaluation: RFT-FM and the baselines over the folds of a split, per input tier, protocols A and B.

Run-level rule (every method): a run alarms at the first step whose score exceeds the
method's threshold. A faulty run is *detected* when that first alarm comes at or after the
fault's onset; a first alarm before onset is a false alarm (and the run is not detected).

Splits (:mod:`rftfm.bench.splits`): ``seed`` holds out seeds of seen configurations (one fold);
``config`` (the headline) holds out whole configurations -- task groups, model families and
sizes, hyper-parameter regimes -- fold by fold, so every test run is a configuration no method
was fitted on.

Input tiers (the signals every method sees): ``a`` the step metrics a framework logs, ``b`` plus
per-trajectory aggregates, ``c`` plus a held-out accuracy, ``bc`` both.

For each family x setting the evaluated runs are the runs of that group directory
(``<family>_<setting>_fault``) plus the normal runs, as in the published evaluation:

* protocol A (published labels): every run of the fault directory is positive, including
  its un-injected control runs;
* protocol B (honest labels): only injected runs are positive; controls are negatives.

Folds of the ``config`` split overlap (a run of task ``t``, family ``f``, size ``s`` is held out once per
axis), so the pooled tables count such a run once per fold it is tested in; ``by_fold`` lists each fold.

Faults with onset at step 1 and mid-run onsets are tabulated apart (with every negative run in
both): at step 1 a run has no healthy history of its own to be compared with.

False alarms are reported over the test runs that protocol B counts as normal (normal and
control runs): the fraction of them that alarm at all, and alarm episodes (rising edges)
per 1,000 normal steps, where normal steps also include the pre-onset steps of faulty runs.
Detection delay (steps from onset to first alarm) is reported for detected mid-run faults.

RFT-FM (configuration-free) is fitted on the train side's runs, faulty ones included (it learns
what faults look like across configurations). "RFT-FM profile" (the per-configuration detector)
and every baseline are fitted on the train side's normal and control runs only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from rftfm.bench import intervals
from rftfm.bench.baselines import make_baselines
from rftfm.bench.baselines.base import NORMAL_KINDS, Baseline, RunCubes
from rftfm.bench.splits import folds as split_folds
from rftfm.faults.taxonomy import FAMILIES, STRENGTHS, group_dir
from rftfm.fm import kl_coefficient, repeat_rewards, unscored
from rftfm.fm.cube import CUBE_SIGNALS
from rftfm.fm.detect import TIERS, Detector, DetectorConfig
from rftfm.fm.features import INVARIANT_FEATURES, TRAJECTORY_FEATURES, features_frame
from rftfm.fm.profile_detect import ProfileDetector
from rftfm.io.loader import load_benchmark

RFTFM = "RFT-FM"
IN_TRAINER = "RFT-FM in the trainer"
PROFILE = "RFT-FM profile"


class RFTFMMethod(Baseline):
    """The configuration-free detector judged by the shared run-level rule (fitted on faulty runs too)."""

    name = RFTFM
    needs_calibration = False  # calibrates itself (out of fold, whole configurations held out)

    def __init__(self, tier: str, config: DetectorConfig | None = None, detector: Detector | None = None) -> None:
        self.tier = tier
        self.detector = detector or Detector(config)
        self.prefit = detector is not None

    def fit_frames(self, runs: pl.DataFrame, features: pl.DataFrame, groups: list[str]) -> None:
        if not self.prefit:
            self.detector.fit(runs, features, groups=groups, tiers=(self.tier,))

    def fit(self, normal: RunCubes) -> None:  # fitted through fit_frames (needs faulty runs and groups)
        pass

    def score(self, runs: RunCubes) -> np.ndarray:
        scores, self.threshold = self.detector.score_cube(
            runs.cube, runs.steps, self.tier, runs.learning_rate, runs.identity, runs.binary, runs.unscored,
            runs.repeats,
        )
        return scores


class InTrainerMethod(RFTFMMethod):
    """RFT-FM as :class:`~rftfm.integrations.trl_callback.RFTFMCallback` runs it inside a TRL GRPOTrainer, which tells
    the detector what a log read alone does not say: the trainer's configuration trains on-policy (TRL's own test,
    :func:`~rftfm.fm.on_policy.trl_on_policy`, holds for every benchmark run: one optimiser step per fresh batch), so
    any clip ratio above 0 alarms; and the trainer hands over its batch's advantage invariants
    (:mod:`rftfm.integrations.trl_advantages`), armed from the first record, whatever the tier's other signals, and
    the share of its batch's completions no reward function scored (:mod:`rftfm.fm.unscored`) and the repeated
    completions it scored differently (:mod:`rftfm.fm.repeat_rewards`); and the KL coefficient
    it is configured with (``beta``, loss type, length limit), against which the loss per unit of
    KL is judged (:mod:`rftfm.fm.kl_coefficient`). The same fit as :class:`RFTFMMethod`; only the scoring knows
    more."""

    name = IN_TRAINER
    #: signals the trainer hands over beside the tier's own (read by the fitting-free invariant channel only)
    handed_over = (*INVARIANT_FEATURES, unscored.SIGNAL, repeat_rewards.SIGNAL)

    def __init__(self, tier: str, config: DetectorConfig | None = None, detector: Detector | None = None) -> None:
        super().__init__(tier, config, detector)
        self.configured: dict[str, kl_coefficient.Configured | None] = {}

    def set_trainers(self, test: pl.DataFrame) -> None:
        """What each test run's trainer says of its KL coefficient (``beta``, loss type, length limit), which the
        callback reads off the trainer (:meth:`~rftfm.fm.detect.Detector.know_kl_coefficient`)."""
        self.configured = {r["run_id"]: kl_coefficient.Configured.of_config(r) for r in test.iter_rows(named=True)}

    def score(self, runs: RunCubes) -> np.ndarray:
        known = self.detector.on_policy, self.detector.invariants_known  # (a detector passed in may be shared)
        self.detector.know_on_policy(True)
        self.detector.know_invariants(True)
        try:
            scores = super().score(runs)
        finally:
            self.detector.know_on_policy(known[0])
            self.detector.know_invariants(known[1])
        # the loss per unit of KL against the configured coefficient: a fitting-free channel, threshold 1 (as live)
        configured = [self.configured.get(r) for r in runs.run_ids]
        units = np.abs(kl_coefficient.cube_units(runs.cube, runs.steps, configured))
        return np.where(runs.steps > 0, np.fmax(scores, units), np.nan)


class ProfileMethod(Baseline):
    """The per-configuration detector: profiles of the train side's configurations, else the global one."""

    name = PROFILE
    needs_calibration = False

    def __init__(self) -> None:
        self.detector = ProfileDetector()

    def fit_frames(self, normal_runs: pl.DataFrame, features: pl.DataFrame) -> None:
        self.detector.fit(normal_runs, features)

    def fit(self, normal: RunCubes) -> None:
        pass

    def set_configs(self, configs: list[tuple[str | None, str | None]]) -> None:
        self.configs = configs

    def score(self, runs: RunCubes) -> np.ndarray:
        out = np.full(runs.steps.shape, np.nan)
        self.thresholds = np.zeros(len(runs.run_ids))
        for key in sorted(set(self.configs), key=str):
            idx = np.array([i for i, c in enumerate(self.configs) if c == key])
            scores, threshold = self.detector.score_cube(runs.cube[idx], runs.steps[idx], *key)
            out[idx] = scores
            self.thresholds[idx] = threshold
        return out

    def alarms(self, runs: RunCubes) -> np.ndarray:
        scores = self.score(runs)
        return np.where(np.isfinite(scores), scores > self.thresholds[:, None], False) & (runs.steps > 0)


def mask_tier(cubes: RunCubes, tier: str, keep: tuple[str, ...] = ()) -> RunCubes:
    """The cubes as a log of ``tier`` has them: signals outside the tier (and ``keep``) are missing, and so are the
    share of unscored completions and the repeated completions scored differently where the tier has no
    per-completion records (unless ``keep`` names them: a trainer hands both over)."""
    hidden = [i for i, s in enumerate(CUBE_SIGNALS) if s not in TIERS[tier] and s not in keep]
    cube = cubes.cube.copy()
    cube[..., hidden] = np.nan
    records = any(s in TIERS[tier] for s in TRAJECTORY_FEATURES) or unscored.SIGNAL in keep
    return RunCubes(
        cubes.run_ids, cube, cubes.steps, cubes.learning_rate, cubes.identity, cubes.binary,
        cubes.unscored if records else np.zeros(cubes.steps.shape),
        cubes.repeats if records else np.zeros(cubes.steps.shape),
    )


def run_outcomes(test: pl.DataFrame, cubes: RunCubes, alarms: np.ndarray) -> pl.DataFrame:
    """One row per test run: first alarm, detection, false-alarm episodes and normal steps."""
    rows = []
    info = {r["run_id"]: r for r in test.iter_rows(named=True)}
    for i, run_id in enumerate(cubes.run_ids):
        r = info[run_id]
        present = cubes.steps[i] > 0
        step_no = cubes.steps[i][present]
        flags = alarms[i][present]
        first = int(step_no[np.argmax(flags)]) if flags.any() else None
        faulty = r["control_or_fault"] == "fault"
        onset = int(r.get("onset_step") or 1) if faulty else None
        normal_mask = np.ones_like(flags) if not faulty else step_no < onset
        rising = flags & ~np.concatenate([[False], flags[:-1]])
        rows.append(
            {
                "run_id": run_id,
                "group": r.get("group"),
                "kind": r["control_or_fault"],
                "fault_family": r.get("fault_family"),
                "fault_type": r.get("fault_type"),
                "fault_strength": r.get("fault_strength"),
                "onset_step": onset,
                "first_alarm": first,
                "alarmed": first is not None,
                "detected": bool(faulty and first is not None and first >= onset),
                "pre_onset_alarm": bool(faulty and first is not None and first < onset),
                "delay": (first - onset) if faulty and first is not None and first >= onset else None,
                "normal_steps": int(normal_mask.sum()),
                "false_alarm_episodes": int((rising & normal_mask.astype(bool)).sum()),
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None)


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": 100 * p, "recall": 100 * r, "f1": 100 * f1}


def protocol_table(out: pl.DataFrame, protocol: str) -> dict[str, Any]:
    """Per family x setting P/R/F1 and the average F1 over families, per setting."""
    normal = out.filter(pl.col("kind") == "normal")
    rows = []
    for family in FAMILIES:
        for setting in STRENGTHS:
            d = out.filter(pl.col("group") == group_dir(family, setting))
            faults, controls = d.filter(pl.col("kind") == "fault"), d.filter(pl.col("kind") == "control")
            if faults.height == 0:
                continue
            tp = int(faults["detected"].sum())
            fn = faults.height - tp
            fp = int(normal["alarmed"].sum()) + int(faults["pre_onset_alarm"].sum())
            if protocol == "A":
                tp += int(controls["alarmed"].sum())
                fn += controls.height - int(controls["alarmed"].sum())
            else:
                fp += int(controls["alarmed"].sum())
            rows.append(
                {
                    "family": family,
                    "setting": setting,
                    "positives": tp + fn,
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    **_prf(tp, fp, fn),
                }
            )
    avg = {
        s: (
            float(np.mean([r["f1"] for r in rows if r["setting"] == s]))
            if any(r["setting"] == s for r in rows)
            else None
        )
        for s in STRENGTHS
    }
    return {"rows": rows, "avg_f1": avg}


def false_alarms(out: pl.DataFrame) -> dict[str, Any]:
    negatives = out.filter(pl.col("kind").is_in(NORMAL_KINDS))
    steps = int(out["normal_steps"].sum())
    episodes = int(out["false_alarm_episodes"].sum())
    return {
        "normal_runs": negatives.height,
        "normal_runs_alarmed": int(negatives["alarmed"].sum()),
        "pct_normal_runs_alarmed": 100 * float(negatives["alarmed"].mean()) if negatives.height else None,
        "faulty_runs_alarmed_before_onset": int(out["pre_onset_alarm"].sum()),
        "normal_steps": steps,
        "false_alarm_episodes": episodes,
        "per_1000_normal_steps": 1000 * episodes / steps if steps else None,
    }


def delays(out: pl.DataFrame) -> dict[str, Any]:
    mid = out.filter((pl.col("kind") == "fault") & (pl.col("onset_step") > 1))
    result: dict[str, Any] = {"mid_run_faults": mid.height, "detected": int(mid["detected"].sum()) if mid.height else 0}
    for setting in (None, *STRENGTHS):
        d = mid if setting is None else mid.filter(pl.col("fault_strength") == setting)
        values = d["delay"].drop_nulls().to_numpy() if d.height else np.array([])
        key = "all" if setting is None else setting
        result[key] = {
            "n": int(values.size),
            "median": float(np.median(values)) if values.size else None,
            "p90": float(np.quantile(values, 0.9)) if values.size else None,
        }
    return result


def per_type(out: pl.DataFrame) -> list[dict[str, Any]]:
    faults = out.filter(pl.col("kind") == "fault")
    if not faults.height:
        return []
    agg = faults.group_by("fault_family", "fault_type", "fault_strength").agg(
        runs=pl.len(),
        recall=100 * pl.col("detected").mean(),
        pre_onset=pl.col("pre_onset_alarm").sum(),
        median_delay=pl.col("delay").median(),
    )
    return agg.sort("fault_family", "fault_type", "fault_strength").to_dicts()


def _summaries(out: pl.DataFrame) -> dict[str, Any]:
    """Protocol tables for all faults, step-1 onsets and mid-run onsets (negatives in each), plus the rest."""
    faults = pl.col("kind") == "fault"
    step1 = out.filter(~faults | (pl.col("onset_step") <= 1))
    mid = out.filter(~faults | (pl.col("onset_step") > 1))
    return {
        "protocols": {p: protocol_table(out, p) for p in ("A", "B")},
        "mid_run": {p: protocol_table(mid, p) for p in ("A", "B")},
        "step1": {p: protocol_table(step1, p) for p in ("A", "B")},
        "false_alarms": false_alarms(out),
        "delay": delays(out),
        "per_type": per_type(out),
    }


def _methods(
    tier: str,
    detector: Detector | None,
    detector_config: DetectorConfig | None,
    baselines: list[str] | None,
    with_baselines: bool,
    seed: int,
    in_trainer: bool = False,
) -> list[Baseline]:
    rftfm: list[Baseline] = [RFTFMMethod(tier, detector_config, detector)]
    if in_trainer:
        rftfm.append(InTrainerMethod(tier, detector_config, detector))
    if not with_baselines:
        return rftfm
    return rftfm + [ProfileMethod()] + make_baselines(seed, baselines)


def _fit_and_alarm(
    method: Baseline,
    train: pl.DataFrame,
    test: pl.DataFrame,
    features: pl.DataFrame,
    normal_cubes: RunCubes,
    test_cubes: RunCubes,
    target: float,
    seed: int,
) -> np.ndarray:
    if isinstance(method, RFTFMMethod):
        method.fit_frames(train, features, config_groups(train))
        if isinstance(method, InTrainerMethod):
            method.set_trainers(test)
    elif isinstance(method, ProfileMethod):
        method.fit_frames(train.filter(pl.col("control_or_fault").is_in(NORMAL_KINDS)), features)
        method.set_configs(list(zip(_col(test, "task_group"), _col(test, "model_size"))))
    else:
        method.fit_calibrated(normal_cubes, target, seed)
    return method.alarms(test_cubes)


def config_groups(runs: pl.DataFrame) -> list[str]:
    """The configuration of each run (what the detector's own out-of-fold calibration holds out together)."""
    cols = [c for c in ("task_group", "model_family", "model_size", "config_id") if c in runs.columns]
    return (
        ["|".join(str(v) for v in row) for row in runs.select(cols).iter_rows()] if cols else runs["run_id"].to_list()
    )


def _col(frame: pl.DataFrame, name: str) -> list[Any]:
    return frame[name].to_list() if name in frame.columns else [None] * frame.height


@dataclass
class _FoldJob:
    """What one fold's evaluation needs (picklable, so folds can run in worker processes)."""

    root: str
    fold: str
    train_ids: list[str]
    test_ids: list[str]
    tiers: tuple[str, ...]
    baselines: list[str] | None
    with_baselines: bool
    detector_config: DetectorConfig | None
    detector: Detector | None
    seed: int
    cache: str | None
    in_trainer: bool = False


_LOADED: dict[str, tuple[pl.DataFrame, pl.DataFrame]] = {}


def _load(root: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(runs, features) of a benchmark, loaded once per process."""
    if root not in _LOADED:
        bench = load_benchmark(root)
        features = features_frame(bench.steps, bench.trajectories)
        _LOADED[root] = (bench.runs.filter(pl.col("run_id").is_in(features["run_id"].unique().to_list())), features)
    return _LOADED[root]


def _cache_path(job: _FoldJob, tier: str, method: str) -> Path | None:
    if job.cache is None:
        return None
    safe = "".join(c if c.isalnum() or c in "=._-" else "_" for c in f"{job.fold}__{tier}__{method}")
    return Path(job.cache) / f"{safe}.parquet"


class StaleCache(ValueError):
    """A ``cache`` directory written for other runs than the benchmark's."""


def _claim_cache(cache: Path, runs: pl.DataFrame) -> None:
    """Tie a cache directory to the benchmark's run ids: outcomes cached for other data are never reused."""
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(runs["run_id"].to_list())).encode()).hexdigest()[:16]
    stamp = cache / "runs.sha256"
    if stamp.exists() and stamp.read_text(encoding="utf-8").strip() != digest:
        raise StaleCache(
            f"cache {cache} holds outcomes of other runs (fingerprint {stamp.read_text().strip()}, this data "
            f"{digest}): delete it or give another --cache"
        )
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n", encoding="utf-8")


def _run_fold(job: _FoldJob, on_method: Callable[[str], None] | None = None) -> list[tuple[str, str, pl.DataFrame]]:
    """(tier, method, outcomes with a ``seconds`` column) of every method on one fold; cached per file."""
    runs, features = _load(job.root)
    train = runs.filter(pl.col("run_id").is_in(job.train_ids))
    test = runs.filter(pl.col("run_id").is_in(job.test_ids))
    normal_train = train.filter(pl.col("control_or_fault").is_in(NORMAL_KINDS))
    all_test = RunCubes.build(features, test["run_id"].to_list())
    all_normal = RunCubes.build(features, normal_train["run_id"].to_list())
    target = (job.detector_config or DetectorConfig()).false_alarm_target
    out = []
    for tier in job.tiers:
        test_cubes, normal_cubes = mask_tier(all_test, tier), mask_tier(all_normal, tier)
        methods = _methods(
            tier, job.detector, job.detector_config, job.baselines, job.with_baselines, job.seed, job.in_trainer
        )
        for method in methods:
            path = _cache_path(job, tier, method.name)
            if path is not None and path.exists():
                out.append((tier, method.name, pl.read_parquet(path)))
                continue
            if on_method:
                on_method(f"{job.fold} / tier {tier} / {method.name}")
            start = time.perf_counter()
            handed_over = getattr(method, "handed_over", ())
            cubes = mask_tier(all_test, tier, handed_over) if handed_over else test_cubes
            alarms = _fit_and_alarm(method, train, test, features, normal_cubes, cubes, target, job.seed)
            outcomes = run_outcomes(test, cubes, alarms).with_columns(
                fold=pl.lit(job.fold), seconds=pl.lit(time.perf_counter() - start)
            )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                outcomes.write_parquet(path)
            out.append((tier, method.name, outcomes))
    return out


def evaluate_detection(
    root: str | Path,
    split: str = "config",
    tiers: tuple[str, ...] = ("a", "b", "c", "bc"),
    baselines: list[str] | None = None,
    with_baselines: bool = True,
    detector_config: DetectorConfig | None = None,
    detector: Detector | None = None,
    seed: int = 0,
    on_method: Callable[[str], None] | None = None,
    workers: int = 1,
    cache: str | Path | None = None,
    only: list[str] | None = None,
    in_trainer: bool = False,
) -> dict[str, Any]:
    """Evaluate RFT-FM (fitted per fold, or ``detector`` as given) and the baselines, per tier.

    ``workers`` > 1 evaluates folds in that many processes; ``cache`` keeps each fold x tier x method's
    outcomes in a directory, so an interrupted evaluation resumes (delete it when the code changes); ``only``:
    evaluate these folds only; ``in_trainer``: also RFT-FM as the TRL callback runs it (:class:`InTrainerMethod`)."""
    runs, _ = _load(str(root))
    if cache is not None:
        _claim_cache(Path(cache), runs)
    if split == "all":  # score every run with a fitted detector (an external test set); no baselines
        if detector is None:
            raise ValueError("split 'all' evaluates a fitted detector on every run: pass detector=")
        folds, with_baselines = [("all", runs.clear(), runs)], False
    else:
        folds = split_folds(runs, split)
    folds = [f for f in folds if f[2].height and (f[1].height or detector is not None) and (not only or f[0] in only)]
    jobs = [
        _FoldJob(
            str(root),
            name,
            train["run_id"].to_list(),
            test["run_id"].to_list(),
            tiers,
            baselines,
            with_baselines,
            detector_config,
            detector,
            seed,
            None if cache is None else str(cache),
            in_trainer,
        )
        for name, train, test in folds
    ]
    results = _collect(_run_jobs(jobs, workers, on_method), tiers)
    kinds = runs.group_by("control_or_fault").len().to_dicts()
    return {
        "data": str(root),
        "split": split,
        "false_alarm_target_pct": 100 * target_of(detector_config),
        "folds": [{"fold": name, "train_runs": train.height, "test_runs": test.height} for name, train, test in folds],
        "runs_loaded": runs.height,
        "runs_by_kind": {k["control_or_fault"]: k["len"] for k in kinds},
        "tiers": list(tiers),
        "methods": results,
    }


def _run_jobs(jobs: list[_FoldJob], workers: int, on_method: Callable[[str], None] | None) -> list[Any]:
    """Each fold's outcomes, in ``workers`` processes when there are several folds."""
    if workers <= 1 or len(jobs) <= 1:
        return [_run_fold(job, on_method) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # spawn, not fork: polars' thread pool, already started in this process, deadlocks a forked child
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        parts = []
        for job, result in zip(jobs, pool.map(_run_fold, jobs)):
            if on_method:
                on_method(f"fold {job.fold} done")
            parts.append(result)
    return parts


_RUN_COLUMNS = (
    "fold", "run_id", "group", "kind", "fault_type", "fault_strength", "onset_step", "first_alarm", "detected",
    "pre_onset_alarm", "delay",
)


def _collect(parts: list[Any], tiers: tuple[str, ...]) -> dict[str, Any]:
    """Per tier and method: the summaries over every fold (and, for RFT-FM, per fold and per run)."""
    outcomes: dict[str, dict[str, list[pl.DataFrame]]] = {t: {} for t in tiers}
    for part in parts:
        for tier, name, frame in part:
            outcomes[tier].setdefault(name, []).append(frame)
    results: dict[str, Any] = {}
    for tier in tiers:
        results[tier] = {}
        for name, frames in outcomes[tier].items():
            out = pl.concat(frames, how="diagonal_relaxed")
            results[tier][name] = {
                **_summaries(out),
                "seconds": round(float(out.group_by("fold").agg(pl.col("seconds").first())["seconds"].sum()), 1),
            }
            if name in (RFTFM, IN_TRAINER):
                results[tier][name]["by_fold"] = _by_fold(out)
                results[tier][name]["runs"] = out.select(*_RUN_COLUMNS).to_dicts()
    return results


def target_of(config: DetectorConfig | None) -> float:
    return (config or DetectorConfig()).false_alarm_target


def _by_fold(out: pl.DataFrame) -> list[dict[str, Any]]:
    """Per fold: mid-run F1 easy / hard (protocol B), normal runs alarmed, median delay."""
    rows = []
    for (fold,), part in out.group_by("fold", maintain_order=True):
        s = _summaries(part)
        f1 = s["mid_run"]["B"]["avg_f1"]
        rows.append(
            {
                "fold": fold,
                "runs": part.height,
                "f1_easy_mid": f1["easy"],
                "f1_hard_mid": f1["hard"],
                "pct_normal_alarmed": s["false_alarms"]["pct_normal_runs_alarmed"],
                "median_delay": s["delay"]["all"]["median"],
            }
        )
    return rows


# ---------------------------------------------------------------------------- markdown
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _headline_row(name: str, m: dict[str, Any]) -> str:
    mid, one, fa, d = m["mid_run"]["B"]["avg_f1"], m["step1"]["B"]["avg_f1"], m["false_alarms"], m["delay"]["all"]
    return (
        f"| {name} | {_fmt(mid['easy'])} | {_fmt(mid['hard'])} | {_fmt(one['easy'])} | {_fmt(one['hard'])} | "
        f"{_fmt(fa['pct_normal_runs_alarmed'])} ({fa['normal_runs_alarmed']}/{fa['normal_runs']}) | "
        f"{_fmt(fa['per_1000_normal_steps'], 2)} | {_fmt(d['median'])} | {_fmt(d['p90'])} | {_fmt(m['seconds'])} |"
    )


TIER_TITLES = {"a": "step metrics only", "b": "plus trajectories", "c": "plus held-out accuracy", "bc": "everything"}


def to_markdown(result: dict[str, Any]) -> str:
    """Tables of one evaluation (as written by ``--markdown``): per tier, methods side by side."""
    folds = ", ".join(f"{f['fold']} ({f['test_runs']} test runs)" for f in result["folds"])
    lines = [
        f"### Split: {result['split']}",
        "",
        *([f"Written by `{result['command']}`.", ""] if result.get("command") else []),
        f"Data `{result['data']}` ({result['runs_loaded']} runs: {result['runs_by_kind']}); folds: {folds}. "
        f"False-alarm target {result['false_alarm_target_pct']:.1f} % of normal runs. Protocol B (controls are "
        "normal). F1 is the average over families; mid-run and step-1 onsets apart (every negative run in both). "
        "Delay: steps from a mid-run onset to the first alarm; s: fit + score seconds over all folds.",
    ]
    for tier in result["tiers"]:
        methods = result["methods"][tier]
        lines += [
            "",
            f"#### Tier {tier}: {TIER_TITLES[tier]}",
            "",
            "| method | F1 easy, mid-run | F1 hard, mid-run | F1 easy, step 1 | F1 hard, step 1 | "
            "normal runs alarmed % | false alarms / 1000 normal steps | median delay | p90 delay | s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_headline_row(n, m) for n, m in methods.items()]
    tier = result["tiers"][0]
    lines += _family_lines(result["methods"][tier], tier)
    lines += _fold_lines(result["methods"][tier][RFTFM].get("by_fold", []), tier)
    for tier in result["tiers"]:
        lines += _type_lines(result["methods"][tier][RFTFM], tier)
        if IN_TRAINER in result["methods"][tier]:
            lines += _type_lines(result["methods"][tier][IN_TRAINER], tier, IN_TRAINER)
    return "\n".join(lines) + "\n"


def _family_lines(methods: dict[str, Any], tier: str) -> list[str]:
    """Per family and setting, RFT-FM's P / R / F1 beside every method's F1, for both onset kinds."""
    names, lines = list(methods), []
    for key, title in (("mid_run", "mid-run onsets"), ("step1", "onset at step 1")):
        lines += ["", f"#### Tier {tier}, per family and setting, {title}, protocol B", ""]
        head = (
            "| family | setting | positives | RFT-FM P | RFT-FM R | RFT-FM F1 | "
            + " | ".join(f"{n} F1" for n in names[1:])
            + " |"
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        rows = {n: {(r["family"], r["setting"]): r for r in methods[n][key]["B"]["rows"]} for n in names}
        for r in methods[names[0]][key]["B"]["rows"]:
            k = (r["family"], r["setting"])
            others = " | ".join(_fmt(rows[n].get(k, {}).get("f1")) for n in names[1:])
            lines.append(
                f"| {r['family']} | {r['setting']} | {r['positives']} | {_fmt(r['precision'])} | "
                f"{_fmt(r['recall'])} | {_fmt(r['f1'])} | {others} |"
            )
    return lines


def _fold_lines(by_fold: list[dict[str, Any]], tier: str) -> list[str]:
    """RFT-FM per held-out fold (nothing for a single fold)."""
    if len(by_fold) <= 1:
        return []
    return [
        "",
        f"#### {RFTFM}, tier {tier}, per held-out fold (mid-run onsets, protocol B)",
        "",
        "| fold | test runs | F1 easy | F1 hard | normal runs alarmed % | median delay |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {r['fold']} | {r['runs']} | {_fmt(r['f1_easy_mid'])} | {_fmt(r['f1_hard_mid'])} | "
        f"{_fmt(r['pct_normal_alarmed'])} | {_fmt(r['median_delay'])} |"
        for r in by_fold
    ]


def _type_lines(rftfm: dict[str, Any], tier: str, name: str = RFTFM) -> list[str]:
    """RFT-FM's (or the method ``name``'s) recall, pre-onset alarms and delay per fault type and strength."""
    return [
        "",
        f"#### {name}, tier {tier}: recall by fault type (protocol B), pre-onset alarms, median delay",
        "",
        "| family | type | setting | runs | recall | pre-onset alarms | median delay |",
        "|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['fault_family']} | {r['fault_type']} | {r['fault_strength']} | {r['runs']} | "
        f"{_fmt(r['recall'])} | {r['pre_onset']} | {_fmt(r['median_delay'])} |"
        for r in rftfm["per_type"]
    ]


# ---------------------------------------------------------------------------- targets
#: Targets on held-out configurations (protocol B, mid-run onsets), and in distribution (held-out seeds).
TARGETS = {
    "a": {"easy": 90.0, "hard": 75.0},
    "c": {"easy": 97.0, "hard": 88.0},
    "seed": {"easy": 97.0, "hard": 93.0},
    "pct_normal_runs_alarmed": 2.0,
    "per_1000_normal_steps": 1.0,
    "median_delay": 3.0,
}


def _spans(m: dict[str, Any], data: Path | None) -> dict[str, str]:
    """Each headline figure's 95 % interval over resampled runs (:mod:`rftfm.bench.intervals`) as text; empty when the
    rows do not name their runs' groups and no ``data`` does."""
    groups = intervals.run_groups(m["runs"], data)
    if groups is None:
        return {}
    return {k: f"{low:.1f}-{high:.1f}" for k, (_, low, high) in intervals.intervals(m["runs"], groups).items()}


def _tier_target_rows(
    label: str, tier: str, m: dict[str, Any], data: Path | None
) -> list[tuple[str, float | None, float, bool, str | None]]:
    """One method's rows of :func:`targets_markdown` in one tier: mid-run F1 easy / hard, healthy runs alarmed,
    false alarms per 1,000 normal steps, median delay."""
    f1, fa, delay, span = m["mid_run"]["B"]["avg_f1"], m["false_alarms"], m["delay"]["all"], _spans(m, data)
    return [
        (f"{label}: avg F1 easy ≥ {TARGETS[tier]['easy']:.0f}", f1["easy"], TARGETS[tier]["easy"], True,
         span.get("easy")),
        (f"{label}: avg F1 hard ≥ {TARGETS[tier]['hard']:.0f}", f1["hard"], TARGETS[tier]["hard"], True,
         span.get("hard")),
        (
            f"{label}: normal and control runs alarmed ≤ 2 % ({fa['normal_runs_alarmed']}/{fa['normal_runs']})",
            fa["pct_normal_runs_alarmed"],
            TARGETS["pct_normal_runs_alarmed"],
            False,
            span.get("healthy"),
        ),
        (f"{label}: false alarms per 1,000 normal steps ≤ 1", fa["per_1000_normal_steps"],
         TARGETS["per_1000_normal_steps"], False, None),
        (f"{label}: median delay ≤ 3 steps (p90 {_fmt(delay['p90'])})", delay["median"], TARGETS["median_delay"],
         False, None),
    ]


def targets_markdown(config: dict[str, Any], seed: dict[str, Any] | None = None, data: Path | None = None) -> str:
    """Where each detection target stands, from the JSON results of the config (and seed) splits, with the 95 %
    interval of each F1 and healthy share over resampled runs (``data``: the benchmark, for results whose rows do not
    name their runs' groups)."""
    rows = []
    for tier in ("a", "c"):
        for method, where in ((RFTFM, ""), (IN_TRAINER, " in the trainer")):
            if method in config["methods"].get(tier, {}):
                rows += _tier_target_rows(f"tier {tier}{where}", tier, config["methods"][tier][method], data)
    if seed is not None:
        tier = seed["tiers"][-1]
        m = seed["methods"][tier][RFTFM]
        f1, span = m["mid_run"]["B"]["avg_f1"], _spans(m, data)
        rows += [
            (f"held-out seeds (tier {tier}): avg F1 easy ≥ 97", f1["easy"], TARGETS["seed"]["easy"], True,
             span.get("easy")),
            (f"held-out seeds (tier {tier}): avg F1 hard ≥ 93", f1["hard"], TARGETS["seed"]["hard"], True,
             span.get("hard")),
        ]
    lines = [
        "| target (held-out configurations, protocol B, mid-run onsets) | measured | 95 % interval (runs resampled) "
        "| status |",
        "|---|---|---|---|",
    ]
    for text, value, target, higher, span_text in rows:
        if value is None:
            status = "not measured"
        else:
            ok = value >= target if higher else value <= target
            status = "met" if ok else f"missed by {abs(value - target):.1f}"
        lines.append(f"| {text} | {_fmt(value)} | {span_text or '–'} | {status} |")
    return "\n".join(lines) + "\n"
