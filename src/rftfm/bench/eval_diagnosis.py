"""Diagnosis evaluation: fault type / family at alarm time on held-out configurations (or seeds), per input tier.

The diagnoser is fitted on each fold's train side; for every faulty test run of the fold the
diagnosis is made at its *alarm step*: the first alarm at or after the onset of the detector fitted
on the same fold (:class:`FoldDetectorAlarms`, from a detection evaluation of the same split) or of
the shipped one, else the documented fall-back ``onset_step + 2`` (capped at the run's last step).
A run the detector never flags after onset is diagnosed at the fall-back step and counted in
``alarm_source``; the targets read the easy faults diagnosed at an alarm (``detected easy``). Each
input tier (``a`` step metrics, ``b`` + trajectories, ``c`` + held-out accuracy, ``bc``) diagnoses
the same runs with the signals that tier lacks hidden; :data:`IN_TRAINER` is tier a as the TRL callback sees it (the
advantage invariants the trainer hands over, armed from the first record, and its on-policy configuration known),
best read at the alarms of the detector run the same way (``FoldDetectorAlarms(..., method=IN_TRAINER)``).

Reports type top-1 / top-3, family accuracy, macro-F1 and per-type recall (all, easy, hard),
the confusion matrix, the leave-one-type-out test (retrain without a type; share of its test
runs called unknown or given to its correct family), and the same metrics for the baselines
(:mod:`rftfm.bench.diagnosis_baselines`). An abstention ("unknown") counts as wrong for the
top-k and family metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from rftfm.bench.diagnosis_baselines import ExpertRules, NearestFingerprint
from rftfm.bench.eval_detection import IN_TRAINER as IN_TRAINER_METHOD
from rftfm.bench.eval_detection import RFTFM, InTrainerMethod, config_groups
from rftfm.bench.splits import folds as split_folds
from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import advantage_signs, binary_reward, kl_coefficient, repeat_rewards, reward_identity, unscored
from rftfm.fm.cube import runs_cube, runs_schedule
from rftfm.fm.detect import TIERS
from rftfm.fm.diagnose import Diagnoser, Seen, seen_broken
from rftfm.fm.diagnosis_features import diagnosis_matrix, mask_signals
from rftfm.fm.features import INVARIANT_FEATURES, TRAJECTORY_FEATURES
from rftfm.fm.policy import ControllerConfig

UNKNOWN = "unknown"
#: The pseudo-tier of a run diagnosed inside its TRL trainer: tier a's signals plus what the trainer hands over.
IN_TRAINER = "a-trainer"


def tier_signals(tier: str) -> tuple[str, ...]:
    """The signals a tier (or :data:`IN_TRAINER`) shows the diagnoser."""
    return (*TIERS["a"], *InTrainerMethod.handed_over) if tier == IN_TRAINER else TIERS[tier]


def fallback_alarm_steps(runs: pl.DataFrame, features: pl.DataFrame) -> dict[str, int]:
    """``onset_step + 2`` capped at the run's last step (used when no detector is available)."""
    last = dict(features.group_by("run_id").agg(pl.col("step").max()).iter_rows())
    out = {}
    for row in runs.iter_rows(named=True):
        if row["run_id"] in last:
            out[row["run_id"]] = int(min((row["onset_step"] or 1) + 2, last[row["run_id"]]))
    return out


def fallback_alarms(
    runs: pl.DataFrame, features: pl.DataFrame, fold: str | None = None
) -> tuple[dict[str, int], dict[str, str]]:
    """Every run diagnosed at the fall-back step (onset + 2): (alarm steps, source of each run's step)."""
    out = fallback_alarm_steps(runs, features)
    return out, dict.fromkeys(out, "fallback")


def detector_alarm_steps(
    runs: pl.DataFrame, features: pl.DataFrame, fold: str | None = None
) -> tuple[dict[str, int], dict[str, str]]:
    """First alarm of the shipped detector at or after onset per run (the same for every ``fold``; the shipped
    detector was fitted on every run, so its alarm times leak the test runs); fall-back where there is none.

    Returns (alarm steps, source of each run's step: detector / fallback_no_alarm / fallback_no_detector).
    """
    fallback = fallback_alarm_steps(runs, features)
    try:
        from rftfm.fm.detect import Detector

        detector = Detector.load_default()
    except Exception:  # detector not available yet: documented fall-back
        return fallback, dict.fromkeys(fallback, "fallback_no_detector")
    out: dict[str, int] = {}
    sources: dict[str, str] = {}
    ids = [r for r in runs["run_id"].to_list() if r in fallback]
    if not ids:
        return out, sources
    cube, steps = runs_cube(features, ids)
    n_steps = steps.shape[1]
    schedule_, identity = runs_schedule(features, ids, n_steps), reward_identity.runs_units(features, ids, n_steps)
    binary = binary_reward.runs_units(features, ids, n_steps)
    scores, threshold = detector.score_cube(cube, steps, learning_rate=schedule_, identity=identity, binary=binary)
    onset = dict(runs.select("run_id", "onset_step").iter_rows())
    for i, run_id in enumerate(ids):
        after = np.flatnonzero((scores[i] > threshold) & (steps[i] >= int(onset[run_id] or 1)))
        if after.size:
            out[run_id], sources[run_id] = int(steps[i, after[0]]), "detector"
        else:
            out[run_id], sources[run_id] = fallback[run_id], "fallback_no_alarm"
    return out, sources


class FoldDetectorAlarms:
    """Alarm steps from a detection evaluation of the same split (``rftfm bench evaluate detection --json``): the
    first alarm at or after onset of the detector fitted on each fold's train side, so the diagnoser is judged
    where a detector that never saw the test configuration alarmed; fall-back where it did not alarm."""

    def __init__(self, detection: dict[str, Any], tier: str = "a", method: str = RFTFM) -> None:
        try:
            rows = detection["methods"][tier][method]["runs"]
        except KeyError:
            raise ValueError(f"the detection result has no {method} runs of tier {tier!r}") from None
        self.tier = tier if method == RFTFM else f"{tier}_{'trainer' if method == IN_TRAINER_METHOD else method}"
        self.first: dict[tuple[str, str], int] = {
            (r["fold"], r["run_id"]): int(r["first_alarm"]) for r in rows if r["detected"]
        }
        self.folds = {r["fold"] for r in rows}

    def __call__(
        self, runs: pl.DataFrame, features: pl.DataFrame, fold: str | None = None
    ) -> tuple[dict[str, int], dict[str, str]]:
        if fold not in self.folds:
            raise ValueError(f"fold {fold!r} is not in the detection result (its folds: {sorted(self.folds)})")
        out = fallback_alarm_steps(runs, features)
        sources = {}
        for run_id in out:
            if (fold, run_id) in self.first:
                out[run_id], sources[run_id] = self.first[(fold, run_id)], f"detector_tier_{self.tier}"
            else:
                sources[run_id] = "fallback_no_alarm"
        return out, sources


def _metrics(
    true: list[str], ranked: list[list[str]], unknown: np.ndarray, strength: list[str], at_alarm: list[bool]
) -> dict[str, Any]:
    """Top-1 / top-3 type, family accuracy, macro-F1, per-type recall; overall, easy, hard, and the easy faults
    diagnosed at a detector's alarm (``at_alarm``; the rest at the fall-back step)."""
    from sklearn.metrics import f1_score

    pred = [UNKNOWN if u else r[0] for r, u in zip(ranked, unknown)]

    def block(idx: list[int]) -> dict[str, Any]:
        if not idx:
            return {"n": 0}
        t = [true[i] for i in idx]
        p = [pred[i] for i in idx]
        top3 = [not unknown[i] and true[i] in ranked[i][:3] for i in idx]
        fam = [p_ != UNKNOWN and FAULT_TYPES[p_].family == FAULT_TYPES[t_].family for t_, p_ in zip(t, p)]
        labels = sorted(set(t), key=list(FAULT_TYPES).index)
        recall = {lab: float(np.mean([p_ == lab for t_, p_ in zip(t, p) if t_ == lab])) for lab in labels}
        return {
            "n": len(idx),
            "type_top1": float(np.mean([a == b for a, b in zip(t, p)])),
            "type_top3": float(np.mean(top3)),
            "family_accuracy": float(np.mean(fam)),
            "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0)),
            "unknown_rate": float(np.mean([p_ == UNKNOWN for p_ in p])),
            # the top-ranked hypothesis even where the diagnoser abstained (what abstention costs)
            "type_top1_forced": float(np.mean([ranked[i][0] == true[i] for i in idx])),
            "family_accuracy_forced": float(
                np.mean([FAULT_TYPES[ranked[i][0]].family == FAULT_TYPES[true[i]].family for i in idx])
            ),
            "per_type_recall": recall,
        }

    all_idx = list(range(len(true)))
    return {
        "all": block(all_idx),
        "easy": block([i for i in all_idx if strength[i] == "easy"]),
        "hard": block([i for i in all_idx if strength[i] == "hard"]),
        "detected easy": block([i for i in all_idx if strength[i] == "easy" and at_alarm[i]]),
    }


def _confusion(true: list[str], pred: list[str]) -> dict[str, Any]:
    labels = [t for t in FAULT_TYPES if t in set(true) | set(pred)]
    cols = labels + [UNKNOWN]
    matrix = [[sum(1 for a, b in zip(true, pred) if a == r and b == c) for c in cols] for r in labels]
    return {"rows": labels, "columns": cols, "matrix": matrix}


def _ranked(prob: np.ndarray, classes: list[str]) -> list[list[str]]:
    return [[classes[j] for j in np.argsort(-row)] for row in prob]


def _faulty(runs: pl.DataFrame) -> pl.DataFrame:
    return runs.filter((pl.col("control_or_fault") == "fault") & pl.col("fault_type").is_in(list(FAULT_TYPES)))


def _fold(
    name: str,
    train: pl.DataFrame,
    test: pl.DataFrame,
    features: pl.DataFrame,
    alarm_fn: Callable,
    tiers: tuple[str, ...],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One fold: fit on ``train``, diagnose ``test``'s faulty runs at alarm time in every tier (and baselines)."""
    faulty_test = _faulty(test)
    alarms, sources = alarm_fn(faulty_test, features, name)
    diagnoser = Diagnoser().fit(train, features, groups=config_groups(train))
    ids = [r for r in faulty_test["run_id"].to_list() if r in alarms]
    x, keys = diagnosis_matrix(features, {r: [alarms[r]] for r in ids}, diagnoser.tracker)
    order = {k[0]: i for i, k in enumerate(keys)}
    x = x[[order[r] for r in ids]]
    meta = {r["run_id"]: r for r in faulty_test.iter_rows(named=True)}
    faulty_train = _faulty(train)
    xt, kt = diagnosis_matrix(features, diagnoser._training_steps(faulty_train, features, None), diagnoser.tracker)
    label = dict(faulty_train.select("run_id", "fault_type").iter_rows())
    out: dict[str, Any] = {
        "fold": name,
        "ids": ids,
        "true": [meta[r]["fault_type"] for r in ids],
        "alarm_source": dict(Counter(sources[r] for r in ids)),
        "at_alarm": [not sources[r].startswith("fallback") for r in ids],
        "strength": [meta[r]["fault_strength"] for r in ids],
        "tiers": {},
    }
    configured = {r: kl_coefficient.Configured.of_config(m) for r, m in meta.items()}
    seen = {known: _seen_at_alarm(features, alarms, ids, known, configured if known else None, meta if known else None)
            for known in {t == IN_TRAINER for t in tiers}}
    for tier in tiers:
        signals = tier_signals(tier)
        xx = mask_signals(x, diagnoser.feature_names, signals)
        # the invariants, the advantage signs, the unscored completions and the repeated ones scored differently come
        # with the trajectories (or from the trainer); the rest are step metrics every tier logs
        told = seen[tier == IN_TRAINER]
        if not set(TRAJECTORY_FEATURES) & set(signals):
            told = [replace(s, unscored=s.unscored and unscored.SIGNAL in signals,
                            repeats=s.repeats and repeat_rewards.SIGNAL in signals) for s in told]
        prob, unknown = diagnoser.apply_seen(
            *diagnoser.scores(xx), told, invariants=set(INVARIANT_FEATURES) <= set(signals)
        )
        knn = NearestFingerprint().fit(mask_signals(xt, diagnoser.feature_names, signals), [label[r] for r, _ in kt])
        rules = ExpertRules(diagnoser.feature_names)
        out["tiers"][tier] = {
            "ranked": _ranked(prob, diagnoser.classes),
            "unknown": unknown,
            "knn": _ranked(knn.predict_proba(xx), knn.classes),
            "rules": _ranked(rules.predict_proba(xx), rules.classes),
        }
    say(f"fold: {train.height} train runs, {len(ids)} faulty test runs; alarms {out['alarm_source']}")
    out["info"] = diagnoser.info | {"family_threshold": diagnoser.family_threshold}
    return out


def _seen_at_alarm(
    features: pl.DataFrame,
    alarms: dict[str, int],
    ids: list[str],
    in_trainer: bool = False,
    configured: dict[str, kl_coefficient.Configured | None] | None = None,
    runs: dict[str, dict[str, Any]] | None = None,
) -> list[Seen]:
    """Per run of ``ids``, what its log shows at the alarm step (:class:`~rftfm.fm.diagnose.Seen`), as
    :meth:`Diagnoser.diagnose` reads it (``in_trainer``: after ``know_invariants(True)`` and
    ``know_on_policy(True)``, with each run's ``configured`` KL coefficient, and told the knobs pushed lately as the
    TRL callback's knob ledger reads them from the trainer, :func:`pushed_at`, from the ``runs`` table's rows)."""
    seen = []
    for run_id in ids:
        history = features.filter((pl.col("run_id") == run_id) & (pl.col("step") <= alarms[run_id]))
        cube, steps = runs_cube(history, [run_id])
        lr = runs_schedule(history, [run_id], steps.shape[1])[0]
        evidence, holds = reward_identity.reading(history, run_id, alarms[run_id])
        binary = binary_reward.run_evidence(history, run_id, alarms[run_id]) is not None
        left = unscored.run_evidence(history, run_id, alarms[run_id]) is not None
        repeats = repeat_rewards.run_evidence(history, run_id, alarms[run_id]) is not None
        flipped, _ = advantage_signs.reading(history, run_id, alarms[run_id], in_trainer)
        broken = seen_broken(cube[0], steps[0], in_trainer, in_trainer)
        told = configured.get(run_id) if configured else None
        pushed = pushed_at(runs[run_id], history["step"].to_list(), alarms[run_id]) if runs else ()
        seen.append(Seen.read(
            cube[0], steps[0], lr, broken, evidence is not None, binary, holds, told, left, flipped, pushed, repeats
        ))
    return seen


def pushed_at(run: dict[str, Any], steps: list[int], alarm: int) -> tuple[str, ...]:
    """The knobs the TRL callback's knob ledger reports pushed lately at step ``alarm`` of a benchmark run (``run``:
    its row of the runs table; ``steps``: its logged steps up to the alarm), as
    :func:`rftfm.fm.policy.recent_pushes` gives them: a run's only knob changes are its fault's, set at onset
    (:class:`rftfm.faults.injectors.base.KnobPush`, the registry's ``pushed_knobs``), seen from an onset after step 1
    (a value set from the start is the configuration, not a change) for ``drift_window`` logged records."""
    onset = run.get("onset_step") or 1
    if run.get("control_or_fault") != "fault" or not run.get("fault_type") or onset <= 1 or alarm < onset:
        return ()
    records = sum(1 for s in steps if onset <= s <= alarm)
    return FAULT_TYPES[run["fault_type"]].pushed_knobs if records <= ControllerConfig().drift_window else ()


def _pooled_tier(
    parts: list[dict[str, Any]], tier: str, true: list[str], strength: list[str], at_alarm: list[bool]
) -> dict[str, Any]:
    """One tier's metrics, confusion matrix, baselines and each run's diagnosis over every fold's diagnoses."""
    no_abstain = np.zeros(len(true), dtype=bool)
    ranked = [r for p in parts for r in p["tiers"][tier]["ranked"]]
    unknown = np.concatenate([p["tiers"][tier]["unknown"] for p in parts])
    pred = [UNKNOWN if u else r[0] for r, u in zip(ranked, unknown)]
    folds = [p["fold"] for p in parts for _ in p["ids"]]
    ids = [r for p in parts for r in p["ids"]]
    return {
        "diagnoser": _metrics(true, ranked, unknown, strength, at_alarm),
        "confusion": _confusion(true, pred),
        "runs": [  # one row per diagnosed run and fold: what was diagnosed where (for a run-by-run comparison)
            {"fold": f, "run_id": r, "true": t, "strength": s, "at_alarm": a, "diagnosed": p_, "top3": rk[:3]}
            for f, r, t, s, a, p_, rk in zip(folds, ids, true, strength, at_alarm, pred, ranked)
        ],
        "baselines": {
            "knn": _metrics(true, [r for p in parts for r in p["tiers"][tier]["knn"]], no_abstain, strength, at_alarm),
            "expert_rules": _metrics(
                true, [r for p in parts for r in p["tiers"][tier]["rules"]], no_abstain, strength, at_alarm
            ),
        },
    }


def evaluate_split(
    runs: pl.DataFrame,
    features: pl.DataFrame,
    split: str = "config",
    alarm_fn: Callable[[pl.DataFrame, pl.DataFrame, str], tuple[dict[str, int], dict[str, str]]] | None = None,
    leave_one_type_out: bool = False,
    progress: Callable[[str], None] | None = None,
    tiers: tuple[str, ...] = ("a", "c", "bc"),
    only: Sequence[str] | None = None,
) -> tuple[dict[str, Any], Diagnoser]:
    """Fit per fold, diagnose each fold's faulty test runs at alarm time, per tier; baselines too.
    ``only``: evaluate these folds only (development folds).

    Returns the pooled result and a diagnoser fitted on the last fold (for the leave-one-type-out test)."""
    say = progress or (lambda _msg: None)
    features = features.drop([c for c in ("fault_active",) if c in features.columns])
    runs = runs.filter(pl.col("run_id").is_in(features["run_id"].unique().to_list()))
    folds = [f for f in split_folds(runs, split) if _faulty(f[2]).height and f[1].height]
    if only:
        folds = [f for f in folds if f[0] in only]
    parts = [
        _fold(name, train, test, features, alarm_fn or detector_alarm_steps, tiers, say) for name, train, test in folds
    ]
    true = [t for p in parts for t in p["true"]]
    strength = [t for p in parts for t in p["strength"]]
    at_alarm = [a for p in parts for a in p["at_alarm"]]
    source: dict[str, int] = {}
    for p in parts:
        for k, v in p["alarm_source"].items():
            source[k] = source.get(k, 0) + v
    by_tier = {tier: _pooled_tier(parts, tier, true, strength, at_alarm) for tier in tiers}
    result: dict[str, Any] = {
        "split": split,
        "folds": [name for name, _, _ in folds],
        "test_faulty_runs": len(true),
        "alarm_source": source,
        "tiers": by_tier,
        "diagnoser_info": [p["info"] for p in parts],
    }
    last_train = folds[-1][1]
    diagnoser = Diagnoser().fit(last_train, features, groups=config_groups(last_train)) if leave_one_type_out else None
    if leave_one_type_out:
        faulty_test = _faulty(folds[-1][2])
        alarms, _ = (alarm_fn or detector_alarm_steps)(faulty_test, features, folds[-1][0])
        result["leave_one_type_out"] = _leave_one_type_out(last_train, faulty_test, features, alarms, say)
    return result, diagnoser


def _leave_one_type_out(
    train: pl.DataFrame,
    faulty_test: pl.DataFrame,
    features: pl.DataFrame,
    alarms: dict[str, int],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Retrain without each type; share of its test runs called unknown or given to its own family."""
    per_type: dict[str, dict[str, Any]] = {}
    for ftype in FAULT_TYPES:
        held = faulty_test.filter(pl.col("fault_type") == ftype)
        if held.height == 0 or train.filter(pl.col("fault_type") == ftype).height == 0:
            continue
        kept = train.filter((pl.col("fault_type") != ftype) | pl.col("fault_type").is_null())
        model = Diagnoser().fit(kept, features, groups=config_groups(kept))
        ids = held["run_id"].to_list()
        x, _ = diagnosis_matrix(features, {r: [alarms[r]] for r in ids}, model.tracker)
        prob, unknown = model.scores(x)
        top = [model.classes[j] for j in prob.argmax(1)]
        family = FAULT_TYPES[ftype].family
        same_family = [not u and FAULT_TYPES[t].family == family for t, u in zip(top, unknown)]
        per_type[ftype] = {
            "n": len(ids),
            "unknown": float(np.mean(unknown)),
            "correct_family": float(np.mean(same_family)),
            "unknown_or_family": float(np.mean(np.array(unknown) | np.array(same_family))),
            "called_as": {t: int(sum(1 for tt, u in zip(top, unknown) if tt == t and not u)) for t in sorted(set(top))},
        }
        say(f"leave-one-type-out {ftype}: {per_type[ftype]['unknown_or_family']:.2f}")
    rates = [v["unknown_or_family"] for v in per_type.values()]
    n = [v["n"] for v in per_type.values()]
    return {
        "per_type": per_type,
        "mean_over_types": float(np.mean(rates)) if rates else None,
        "pooled": float(np.average(rates, weights=n)) if rates else None,
    }


def plot_confusion(confusion: dict[str, Any], path: str | Path, title: str = "diagnosis confusion matrix") -> Path:
    """Confusion matrix (rows true type, columns diagnosed type or unknown) as a PNG image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(confusion["matrix"], dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(11, 9))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(confusion["columns"])), confusion["columns"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(confusion["rows"])), confusion["rows"], fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("diagnosed")
    ax.set_ylabel("injected")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Targets on held-out configurations, easy faults: (tier, metric, goal).
TARGETS = (
    ("a", "family_accuracy", 0.85),
    ("a", "type_top1", 0.70),
    ("c", "family_accuracy", 0.95),
    ("c", "type_top1", 0.85),
)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_report(result: dict[str, Any], image: str | None = None) -> str:
    """Markdown tables of one evaluation result (what docs/diagnosis.md embeds)."""
    lines = [
        f"### split `{result['split']}` ({len(result['folds'])} folds)",
        "",
        *([f"Written by `{result['command']}`.", ""] if result.get("command") else []),
        "All numbers in %. *unknown*: share of abstentions (counted wrong in top-1 / top-3 / family); "
        "*forced*: the top-ranked type even where the Diagnoser abstained.",
        "",
        f"{result['test_faulty_runs']} faulty test runs over the folds; alarm steps: {result['alarm_source']}.",
        "",
        "| tier | method | setting | n | type top-1 | type top-3 | family | macro-F1 | unknown | type top-1 forced "
        "| family forced |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tier, block in result["tiers"].items():
        methods = [("Diagnoser", block["diagnoser"])] + list(block["baselines"].items())
        for name, m in methods:
            for setting in ("all", "easy", "hard", "detected easy"):
                b = m.get(setting, {})
                if not b.get("n"):
                    continue
                lines.append(
                    f"| {tier} | {name} | {setting} | {b['n']} | {_pct(b['type_top1'])} | {_pct(b['type_top3'])} | "
                    f"{_pct(b['family_accuracy'])} | {_pct(b['macro_f1'])} | {_pct(b['unknown_rate'])} | "
                    f"{_pct(b['type_top1_forced'])} | {_pct(b['family_accuracy_forced'])} |"
                )
    tier = next(iter(result["tiers"]))
    lines += _per_type_lines(result["tiers"][tier]["diagnoser"], tier)
    lines += _leave_one_type_out_lines(result.get("leave_one_type_out"))
    lines += _target_lines(result)
    if image:
        lines += ["", f"![confusion matrix, split {result['split']}]({image})"]
    return "\n".join(lines) + "\n"


def _per_type_lines(d: dict[str, Any], tier: str) -> list[str]:
    lines = ["", f"Per-type recall of the Diagnoser, tier {tier} (%):", "", "| type | family | all | easy | hard |",
             "|---|---|---|---|---|"]
    for t in FAULT_TYPES:
        if t in d["all"].get("per_type_recall", {}):
            lines.append(
                f"| {t} | {FAULT_TYPES[t].family} | {_pct(d['all']['per_type_recall'].get(t))} | "
                f"{_pct(d['easy'].get('per_type_recall', {}).get(t))} | "
                f"{_pct(d['hard'].get('per_type_recall', {}).get(t))} |"
            )
    return lines


def _leave_one_type_out_lines(loto: dict[str, Any] | None) -> list[str]:
    if not loto:
        return []
    lines = [
        "",
        "Leave-one-type-out (retrained without the type; %):",
        "",
        "| held-out type | n | unknown | correct family | unknown or family | called as |",
        "|---|---|---|---|---|---|",
    ]
    for t, v in loto["per_type"].items():
        called = ", ".join(f"{k} {n}" for k, n in sorted(v["called_as"].items(), key=lambda kv: -kv[1]) if n)
        lines.append(
            f"| {t} | {v['n']} | {_pct(v['unknown'])} | {_pct(v['correct_family'])} | "
            f"{_pct(v['unknown_or_family'])} | {called} |"
        )
    lines.append(
        f"| **pooled** | | | | **{_pct(loto['pooled'])}** | mean over types {_pct(loto['mean_over_types'])} |"
    )
    return lines


def _target_lines(result: dict[str, Any]) -> list[str]:
    if not any(tier in result["tiers"] for tier, _, _ in TARGETS):
        return []  # only tiers without a target (e.g. bc) were evaluated
    lines = [
        "",
        f"Targets (split `{result['split']}`, easy faults diagnosed at a detector's alarm; the easy faults it "
        "missed, diagnosed at onset + 2, are in the easy rows above):",
        "",
        "| tier | target | measured | goal | met |",
        "|---|---|---|---|---|",
    ]
    for tier, metric, goal in TARGETS:
        if tier not in result["tiers"]:
            continue
        v = result["tiers"][tier]["diagnoser"].get("detected easy", {}).get(metric)
        lines.append(
            f"| {tier} | {metric.replace('_', ' ')} | {_pct(v)} | ≥ {100 * goal:.0f} | "
            f"{'yes' if v is not None and v >= goal else 'no'} |"
        )
    return lines
