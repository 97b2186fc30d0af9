"""Diagnosis evaluation: fault type / family at alarm time on a held-out split.

For every faulty test run the diagnosis is made at its *alarm step*: the first alarm of the
detector (``rftfm.fm.detect``) at or after the onset when a default detector is available,
else the documented fall-back ``onset_step + 2`` (capped at the run's last step). A run the
detector never flags after onset is diagnosed at the fall-back step and counted in
``alarm_source``.

Reports type top-1 / top-3, family accuracy, macro-F1 and per-type recall (all, easy, hard),
the confusion matrix, the leave-one-type-out test (retrain without a type; share of its test
runs called unknown or given to its correct family), and the same metrics for the baselines
(:mod:`rftfm.bench.diagnosis_baselines`). An abstention ("unknown") counts as wrong for the
top-k and family metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl

from rftfm.bench.diagnosis_baselines import ExpertRules, NearestFingerprint
from rftfm.bench.splits import split_runs
from rftfm.faults.taxonomy import FAMILIES, FAULT_TYPES
from rftfm.fm.diagnose import Diagnoser, TRAIN_OFFSETS
from rftfm.fm.diagnosis_features import diagnosis_matrix

UNKNOWN = "unknown"
AlarmFn = Callable[[pl.DataFrame, pl.DataFrame], dict[str, int]]


def fallback_alarm_steps(runs: pl.DataFrame, features: pl.DataFrame) -> dict[str, int]:
    """``onset_step + 2`` capped at the run's last step (used when no detector is available)."""
    last = dict(features.group_by("run_id").agg(pl.col("step").max()).iter_rows())
    out = {}
    for row in runs.iter_rows(named=True):
        if row["run_id"] in last:
            out[row["run_id"]] = int(min((row["onset_step"] or 1) + 2, last[row["run_id"]]))
    return out


def detector_alarm_steps(runs: pl.DataFrame, features: pl.DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """First default-detector alarm at or after onset per run; fall-back where there is none.

    Returns (alarm steps, counts by source: detector / fallback_no_alarm / fallback_no_detector).
    """
    fallback = fallback_alarm_steps(runs, features)
    try:
        from rftfm.fm.detect import Detector

        detector = Detector.load_default()
    except Exception:  # detector not available yet: documented fall-back
        return fallback, {"fallback_no_detector": len(fallback)}
    out, counts = {}, {"detector": 0, "fallback_no_alarm": 0}
    meta = {r["run_id"]: r for r in runs.iter_rows(named=True)}
    feats = features.drop([c for c in ("fault_active",) if c in features.columns])
    for (run_id,), part in feats.group_by("run_id", maintain_order=True):
        if run_id not in meta:
            continue
        info = meta[run_id]
        onset = int(info["onset_step"] or 1)
        alarms = detector.score_run(part.sort("step"), task_group=info["task_group"], model_size=info["model_size"])
        after = [a.step for a in alarms if a.step >= onset]
        if after:
            out[run_id] = int(min(after))
            counts["detector"] += 1
        else:
            out[run_id] = fallback[run_id]
            counts["fallback_no_alarm"] += 1
    return out, counts


def _metrics(true: list[str], ranked: list[list[str]], unknown: np.ndarray, strength: list[str]) -> dict[str, Any]:
    """Top-1 / top-3 type, family accuracy, macro-F1, per-type recall; overall, easy, hard."""
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
            "family_accuracy_forced": float(np.mean([FAULT_TYPES[ranked[i][0]].family == FAULT_TYPES[true[i]].family for i in idx])),
            "per_type_recall": recall,
        }

    all_idx = list(range(len(true)))
    return {
        "all": block(all_idx),
        "easy": block([i for i in all_idx if strength[i] == "easy"]),
        "hard": block([i for i in all_idx if strength[i] == "hard"]),
    }


def _confusion(true: list[str], pred: list[str]) -> dict[str, Any]:
    labels = [t for t in FAULT_TYPES if t in set(true) | set(pred)]
    cols = labels + [UNKNOWN]
    matrix = [[sum(1 for a, b in zip(true, pred) if a == r and b == c) for c in cols] for r in labels]
    return {"rows": labels, "columns": cols, "matrix": matrix}


@dataclass
class _Prepared:
    train: pl.DataFrame
    test: pl.DataFrame
    features: pl.DataFrame
    alarms: dict[str, int]
    alarm_source: dict[str, int]


def _ranked(prob: np.ndarray, classes: list[str]) -> list[list[str]]:
    return [[classes[j] for j in np.argsort(-row)] for row in prob]


def evaluate_split(
    runs: pl.DataFrame,
    features: pl.DataFrame,
    split: str = "seed",
    alarm_fn: Callable[[pl.DataFrame, pl.DataFrame], tuple[dict[str, int], dict[str, int]]] | None = None,
    leave_one_type_out: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Diagnoser]:
    """Train on the split's train side, diagnose its faulty test runs at alarm time; baselines too."""
    say = progress or (lambda _msg: None)
    features = features.drop([c for c in ("fault_active",) if c in features.columns])
    runs = runs.filter(pl.col("run_id").is_in(features["run_id"].unique().to_list()))
    train, test = split_runs(runs, split)
    faulty_test = test.filter((pl.col("control_or_fault") == "fault") & pl.col("fault_type").is_in(list(FAULT_TYPES)))
    alarms, source = (alarm_fn or detector_alarm_steps)(faulty_test, features)
    say(f"split {split}: {train.height} train runs, {faulty_test.height} faulty test runs; alarms {source}")

    diagnoser = Diagnoser().fit(train, features)
    say("diagnoser fitted")
    true = faulty_test["fault_type"].to_list()
    strength = faulty_test["fault_strength"].to_list()
    ids = faulty_test["run_id"].to_list()
    x, keys = diagnosis_matrix(features, faulty_test, {r: [alarms[r]] for r in ids}, diagnoser.profile)
    order = {k[0]: i for i, k in enumerate(keys)}
    x = x[[order[r] for r in ids]]
    prob, unknown = diagnoser.scores(x)
    ranked = _ranked(prob, diagnoser.classes)
    pred = [UNKNOWN if u else r[0] for r, u in zip(ranked, unknown)]
    result: dict[str, Any] = {
        "split": split,
        "train_runs": train.height,
        "test_faulty_runs": faulty_test.height,
        "alarm_source": source,
        "diagnoser": _metrics(true, ranked, unknown, strength),
        "confusion": _confusion(true, pred),
        "diagnoser_info": diagnoser.info | {"family_threshold": diagnoser.family_threshold, "novelty_thresholds": dict(zip(diagnoser.classes, diagnoser.novelty_thresholds.tolist()))},
    }

    # baselines on the same training diagnoses and test vectors
    faulty_train = train.filter((pl.col("control_or_fault") == "fault") & pl.col("fault_type").is_not_null())
    last = dict(features.group_by("run_id").agg(pl.col("step").max()).iter_rows())
    at = {
        r["run_id"]: sorted({min(max((r["onset_step"] or 1) + o, 1), last[r["run_id"]]) for o in TRAIN_OFFSETS})
        for r in faulty_train.iter_rows(named=True) if r["run_id"] in last
    }
    xt, kt = diagnosis_matrix(features, faulty_train, at, diagnoser.profile)
    label = dict(faulty_train.select("run_id", "fault_type").iter_rows())
    knn = NearestFingerprint().fit(xt, [label[r] for r, _ in kt])
    no_abstain = np.zeros(len(ids), dtype=bool)
    knn_ranked = _ranked(knn.predict_proba(x), knn.classes)
    rules = ExpertRules(diagnoser.feature_names)
    rules_ranked = _ranked(rules.predict_proba(x), rules.classes)
    result["baselines"] = {
        "knn": _metrics(true, knn_ranked, no_abstain, strength),
        "expert_rules": _metrics(true, rules_ranked, no_abstain, strength),
    }
    say("baselines done")

    if leave_one_type_out:
        result["leave_one_type_out"] = _leave_one_type_out(train, faulty_test, features, alarms, say)
    return result, diagnoser


def _leave_one_type_out(
    train: pl.DataFrame, faulty_test: pl.DataFrame, features: pl.DataFrame, alarms: dict[str, int], say: Callable[[str], None]
) -> dict[str, Any]:
    """Retrain without each type; share of its test runs called unknown or given to its own family."""
    per_type: dict[str, dict[str, Any]] = {}
    for ftype in FAULT_TYPES:
        held = faulty_test.filter(pl.col("fault_type") == ftype)
        if held.height == 0 or train.filter(pl.col("fault_type") == ftype).height == 0:
            continue
        model = Diagnoser().fit(train.filter((pl.col("fault_type") != ftype) | pl.col("fault_type").is_null()), features)
        ids = held["run_id"].to_list()
        x, _ = diagnosis_matrix(features, held, {r: [alarms[r]] for r in ids}, model.profile)
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
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("diagnosed")
    ax.set_ylabel("injected")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TARGETS = (
    ("type top-1, easy", lambda r: r["diagnoser"]["easy"].get("type_top1"), 0.90),
    ("type top-1, hard", lambda r: r["diagnoser"]["hard"].get("type_top1"), 0.75),
    ("family, easy", lambda r: r["diagnoser"]["easy"].get("family_accuracy"), 0.97),
    ("family, hard", lambda r: r["diagnoser"]["hard"].get("family_accuracy"), 0.90),
    ("leave-one-type-out (unknown or family)", lambda r: (r.get("leave_one_type_out") or {}).get("pooled"), 0.50),
)


def markdown_report(result: dict[str, Any], image: str | None = None) -> str:
    """Markdown tables of one evaluation result (what docs/diagnosis.md embeds)."""
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [f"### split `{result['split']}`", "",
             "All numbers in %. *unknown*: share of abstentions (counted wrong in top-1 / top-3 / family); "
             "*forced*: the top-ranked type even where the Diagnoser abstained.", "",
             f"{result['train_runs']} training runs, {result['test_faulty_runs']} faulty test runs; "
             f"alarm steps: {result['alarm_source']}.", "",
             "| method | setting | n | type top-1 | type top-3 | family | macro-F1 | unknown | type top-1 forced | family forced |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    methods = [("Diagnoser", result["diagnoser"])] + [(k, v) for k, v in result.get("baselines", {}).items()]
    for name, block in methods:
        for setting in ("all", "easy", "hard"):
            b = block[setting]
            if not b.get("n"):
                continue
            lines.append(f"| {name} | {setting} | {b['n']} | {pct(b['type_top1'])} | {pct(b['type_top3'])} | "
                         f"{pct(b['family_accuracy'])} | {pct(b['macro_f1'])} | {pct(b['unknown_rate'])} | "
                         f"{pct(b['type_top1_forced'])} | {pct(b['family_accuracy_forced'])} |")
    lines += ["", "Per-type recall of the Diagnoser (%):", "", "| type | family | all | easy | hard |", "|---|---|---|---|---|"]
    d = result["diagnoser"]
    for t in FAULT_TYPES:
        if t in d["all"].get("per_type_recall", {}):
            lines.append(f"| {t} | {FAULT_TYPES[t].family} | {pct(d['all']['per_type_recall'].get(t))} | "
                         f"{pct(d['easy'].get('per_type_recall', {}).get(t))} | {pct(d['hard'].get('per_type_recall', {}).get(t))} |")
    loto = result.get("leave_one_type_out")
    if loto:
        lines += ["", "Leave-one-type-out (retrained without the type; %):", "",
                  "| held-out type | n | unknown | correct family | unknown or family | called as |", "|---|---|---|---|---|---|"]
        for t, v in loto["per_type"].items():
            called = ", ".join(f"{k} {n}" for k, n in sorted(v["called_as"].items(), key=lambda kv: -kv[1]) if n)
            lines.append(f"| {t} | {v['n']} | {pct(v['unknown'])} | {pct(v['correct_family'])} | {pct(v['unknown_or_family'])} | {called} |")
        lines.append(f"| **pooled** | | | | **{pct(loto['pooled'])}** | mean over types {pct(loto['mean_over_types'])} |")
    if result["split"] == "seed":
        lines += ["", "Targets (held-out seeds):", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for name, get, goal in TARGETS:
            v = get(result)
            lines.append(f"| {name} | {pct(v)} | ≥ {100 * goal:.0f} | {'yes' if v is not None and v >= goal else 'no'} |")
    if result["split"] == "task":
        v = result["diagnoser"]["hard"].get("family_accuracy")
        lines += ["", f"Target held-out task group, family accuracy hard ≥ 80 %: measured {pct(v)} — "
                  f"{'met' if v is not None and v >= 0.8 else 'not met'}."]
    if image:
        lines += ["", f"![confusion matrix, split {result['split']}]({image})"]
    return "\n".join(lines) + "\n"
