"""Remediation evaluation: faulty runs re-trained with the closed loop on, matched by seed.

For every selected faulty run of a benchmark (same configuration, seed and fault):

* ``clean``   -- the same run without the fault (the reference accuracy);
* ``none``    -- the faulty run, loop in alert-only mode (no remediation baseline);
* ``loop``    -- the faulty run with RFT-FM (playbook remediator), which reads the run's logged eval accuracy and is
  handed the engine's held-out evaluation as its eval callable (measured before the first step and whenever a
  decision needs it; :data:`EVAL_CALLABLE_ARMS`);
* ``generic`` -- the faulty run with the generic baseline: rollback + halve the LR on every alarm;
* ``trainside`` -- the faulty run with RFT-FM, which never sees the run's eval accuracy (a user without an eval
  callable: the loop decides from train-side metrics alone).

Repair success = at least one intervention, the anomaly cleared after it (a full revalidation
window after the last action without a confirmed alarm -- the loop's own acting rule -- and the
run not halted) AND final eval accuracy >= ``tolerance`` x the clean run's.
Healthy (normal / control) runs are re-trained with the loop on and off: interventions,
accuracy change, and the compute overhead of the loop.

Final accuracy is measured the same way for every arm: strict-verifier greedy accuracy of
the trainer's final weights on ``FINAL_EVAL_PROMPTS`` held-out prompts of the task group (after
a rollback + halt these are the restored weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rftfm.bench.pool import run_in_pool
from rftfm.faults.taxonomy import FAULT_TYPES
from rftfm.fm import policy
from rftfm.fm.playbook import ends_in_halt_only
from rftfm.records import RunInfo

FAULT_ARMS = ("clean", "none", "loop", "generic", "trainside")
#: Arms an earlier evaluation may lack: its pairs are kept, without these arms' columns.
OPTIONAL_ARMS = ("trainside",)
HEALTHY_ARMS = ("off", "on")  # "off" is trained as the run's clean twin (the same training)
TOLERANCE = 0.9
#: Final accuracy is measured on this many held-out prompts (the training-time eval uses 128): at
#: accuracy ~0.45 a 128-prompt estimate has sd ~0.044, so two equally good runs would differ by more
#: than the 10 % tolerance about a quarter of the time; at 1024 prompts that falls to ~2 %.
FINAL_EVAL_PROMPTS = 1024

_MODELS: dict[str, Any] = {}


@dataclass
class ArmResult:
    run_id: str
    arm: str
    final_accuracy: float
    wall_s: float
    monitor_s: float = 0.0
    steps: int = 0
    alarms: int = 0
    first_alarm_step: int | None = None
    diagnosed: str | None = None  # the top type of the diagnosis acted on first, else of the first one recorded
    interventions: int = 0
    rollbacks: int = 0
    halted: bool = False
    cleared: bool = False
    alarms_after: int = 0
    cleared_strict: bool = False  # not even an explained or unconfirmed alarm after the last action
    errors: int = 0
    outcomes: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def load_components(detector_path: str | None, diagnoser_path: str | None) -> tuple[Any, Any]:
    """Detector and diagnoser (the shipped ones for ``None``), loaded once per process."""
    key = f"{detector_path}|{diagnoser_path}"
    if key not in _MODELS:
        from rftfm.fm.detect import Detector
        from rftfm.fm.diagnose import Diagnoser

        detector = Detector.load(detector_path) if detector_path else Detector.load_default()
        diagnoser = Diagnoser.load(diagnoser_path) if diagnoser_path else Diagnoser.load_default()
        _MODELS[key] = (detector, diagnoser)
    return _MODELS[key]


def clean_twin(info: RunInfo) -> RunInfo:
    """The same run (configuration, seed) without the fault.

    Its run id names only the configuration and seed, so faulty runs that share them share one
    clean arm (trained once).
    """
    twin = info.model_copy(
        update={
            "group": "normal",
            "control_or_fault": "normal",
            "fault_type": None,
            "fault_strength": None,
            "fault_family": None,
            "onset_step": None,
            "run_id": "",
        }
    )
    digest = hashlib.sha256(twin.model_dump_json().encode()).hexdigest()[:10]
    return twin.model_copy(update={"run_id": f"clean-{info.task_group}-{info.model_size}-s{info.seed}-{digest}"})


def run_arm(
    info: RunInfo,
    arm: str,
    detector_path: str | None = None,
    diagnoser_path: str | None = None,
    on_step: Callable[[Any], None] | None = None,
    incidents: Any = None,
    *,
    components: tuple[Any, Any] | None = None,
    sink: Callable[[Any, list[Any]], None] | None = None,
) -> tuple[ArmResult, Any]:
    """Train one arm of one run on the embedded engine; returns its result and the callback (``None``
    without the loop). ``components``: a (detector, diagnoser) pair to use instead of loading them;
    ``on_step(record)`` / ``sink(record, trajectories)``: called after every step."""
    import torch

    from rftfm.bench.runner import build_trainer
    from rftfm.engine.policy_eval import eval_accuracy
    from rftfm.fm.remediate import Remediator
    from rftfm.integrations.trl_callback import RFTFMCallback

    torch.set_num_threads(1)
    watch = arm in ("none", "loop", "generic", "trainside", "on")
    target = clean_twin(info) if arm == "clean" else info
    sinks = [lambda record, trajectories: on_step(record)] if on_step else []
    sinks += [sink] if sink is not None else []
    # loaded before the clock starts: a process's first load (importing LightGBM) is no cost of this arm
    loaded = (components or load_components(detector_path, diagnoser_path)) if watch else None
    with tempfile.TemporaryDirectory(prefix="rftfm-rem-") as tmp:
        start = time.perf_counter()
        trainer = build_trainer(target, sinks, output_dir=tmp)
        callback = None
        if loaded is not None:
            detector, diagnoser = loaded
            callback = RFTFMCallback.attach(
                trainer,
                detector=detector,
                diagnoser=diagnoser,
                remediate=arm != "none",
                remediator=Remediator(generic=arm == "generic"),
                checkpoint_dir=os.path.join(tmp, "ckpt"),
                incidents=incidents,
                report=False,
                **(_eval_callable(trainer, target) if arm in EVAL_CALLABLE_ARMS else {}),
            )
            if arm == "trainside":  # the loop never sees the eval accuracy the engine logs
                sinks = trainer.sinks
                sinks[sinks.index(callback._sink)] = _without_eval_accuracy(callback._sink)
        trainer.train()
        accuracy = eval_accuracy(trainer.model, trainer.task, trainer.task.eval_problems(FINAL_EVAL_PROMPTS))
        wall = time.perf_counter() - start
    result = ArmResult(
        run_id=target.run_id, arm=arm, final_accuracy=accuracy, wall_s=wall, steps=trainer.state.global_step
    )
    if callback is not None and callback.controller is not None:
        fill_from_controller(result, callback.controller)
    return result, callback


#: Arms whose loop is handed an eval callable (the engine's own held-out evaluation, as a user hands ``eval_fn``): the
#: loop measures the accuracy before the first step and whenever a decision needs it between the engine's logged ones.
EVAL_CALLABLE_ARMS = ("loop", "on")


def _eval_callable(trainer: Any, info: RunInfo) -> dict[str, Any]:
    """``eval_fn`` / ``eval_every`` for :meth:`RFTFMCallback.attach`: the engine's held-out evaluation of a model (the
    problems its logged accuracy is measured on), due where the engine logs one (so it adds no evaluation there)."""
    from rftfm.engine.policy_eval import eval_accuracy

    return {
        "eval_fn": lambda model: eval_accuracy(model, trainer.task, trainer.eval_problems),
        "eval_every": info.eval_every or 1,
    }


def _without_eval_accuracy(sink: Callable[[Any, list[Any]], None]) -> Callable[[Any, list[Any]], None]:
    """``sink`` fed step records whose eval accuracy is removed."""
    return lambda record, trajectories: sink(record.model_copy(update={"eval_accuracy": None}), trajectories)


#: Arms of a run through a plain TRL GRPOTrainer subclass (the user-run harness): without the loop, alert-only,
#: the loop deciding from train-side metrics, the loop with an eval callable (RewardEval on held-out prompts).
PLAIN_ARMS = ("clean", "none", "loop", "loop+eval")


@dataclass(frozen=True)
class PlainRun:
    """A run of :mod:`rftfm.testing.user_run` (a plain ``GRPOTrainer`` subclass, a model and task outside the
    benchmark); ``spike_onset``: the LR is multiplied by ``spike_factor`` there; ``sign_bug_onset``: TRL's
    advantages flip sign from there (:class:`~rftfm.testing.user_run.AdvantageSignBug`); ``push``: (onset, knob,
    value), a knob set mid-run (:class:`~rftfm.testing.user_run.KnobPush`); each in every arm but ``clean``."""

    run_id: str
    seed: int = 0
    steps: int = 80
    spike_onset: int | None = None
    spike_factor: float = 30.0
    sign_bug_onset: int | None = None
    push: tuple[int, str, float] | None = None
    eval_every: int = 10
    eval_prompts: int = 64
    logging_steps: int = 1  # TRL's GRPOConfig default is 10
    lr_scheduler: str = "constant"  # TRL's default is "linear" (decay to 0 over the run)


def run_plain_arm(
    run: PlainRun,
    arm: str,
    components: tuple[Any, Any] | None = None,
    detector_path: str | None = None,
    diagnoser_path: str | None = None,
) -> tuple[ArmResult, Any]:
    """Train one arm of ``run`` through the plain trainer and ``RFTFMCallback``; the final accuracy is the
    greedy accuracy on ``FINAL_EVAL_PROMPTS`` held-out prompts (never the ones the eval callable sees)."""
    import torch
    from transformers import PrinterCallback

    from rftfm.integrations.trl_callback import RFTFMCallback
    from rftfm.integrations.trl_eval import RewardEval
    from rftfm.testing import user_run as ur

    if arm not in PLAIN_ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {PLAIN_ARMS}")
    torch.set_num_threads(1)
    fault = None
    if arm != "clean" and run.spike_onset:
        fault = ur.LRSpike(run.spike_onset, run.spike_factor)
    elif arm != "clean" and run.sign_bug_onset:
        fault = ur.AdvantageSignBug(run.sign_bug_onset)
    elif arm != "clean" and run.push:
        fault = ur.KnobPush(*run.push)
    # loaded before the clock starts: a process's first load (importing LightGBM) is no cost of this arm
    loaded = (components or load_components(detector_path, diagnoser_path)) if arm != "clean" else None
    with tempfile.TemporaryDirectory(prefix="rftfm-plain-") as tmp:
        start = time.perf_counter()
        trainer = ur.user_trainer(tmp, steps=run.steps, seed=run.seed, spike=fault, eval_prompts=run.eval_prompts,
                                  logging_steps=run.logging_steps, lr_scheduler_type=run.lr_scheduler)
        trainer.remove_callback(PrinterCallback)  # the evaluation prints its own rows, not every log dict
        callback = None
        if loaded is not None:
            detector, diagnoser = loaded
            eval_fn = RewardEval.from_trainer(trainer, threshold=1.0) if arm == "loop+eval" else None
            callback = RFTFMCallback.attach(
                trainer,
                detector=detector,
                diagnoser=diagnoser,
                remediate=arm != "none",
                checkpoint_dir=os.path.join(tmp, "ckpt"),
                run_id=run.run_id,
                eval_fn=eval_fn,
                eval_every=run.eval_every,
                report=False,
            )
        trainer.train()
        wall = time.perf_counter() - start
        accuracy = ur.accuracy(trainer.model, n=FINAL_EVAL_PROMPTS, offset=run.eval_prompts)
    result = ArmResult(
        run_id=run.run_id, arm=arm, final_accuracy=accuracy, wall_s=wall, steps=trainer.state.global_step
    )
    if callback is not None and callback.controller is not None:
        fill_from_controller(result, callback.controller)
    return result, callback


def fill_from_controller(result: ArmResult, ctl: Any) -> None:
    """``result``'s loop fields from a finished controller (its incident events, counts and mode)."""
    events = ctl.store.events(run_id=ctl.run_id)
    alarms = [e["step"] for e in events if e["kind"] == "alarm"]
    actions = [e for e in events if e["kind"] == "action"]
    diagnoses = [e for e in events if e["kind"] == "diagnosis"]
    result.monitor_s = ctl.monitor_seconds
    result.alarms = len(alarms)
    result.first_alarm_step = alarms[0] if alarms else None
    # the diagnosis the loop first acted on (the last one by its first action), not an earlier unconfirmed alarm's
    acted_on = [d for d in diagnoses if actions and d["step"] <= actions[0]["step"]]
    if chosen := (acted_on[-1] if acted_on else diagnoses[0]) if diagnoses else None:
        ranked = chosen["payload"].get("ranked") or []
        result.diagnosed = None if chosen["payload"].get("unknown") or not ranked else ranked[0]["fault_type"]
    result.interventions = ctl.counts["interventions"]
    result.rollbacks = ctl.counts["rollbacks"]
    result.halted = ctl.mode == "halted"
    result.errors = ctl.counts["errors"]
    result.outcomes = [o.result for o in ctl.outcomes]
    result.actions = [
        f"{e['step']}:{e['payload']['kind']}"
        + (f":{e['payload']['knob']}={e['payload']['value']}" if e["payload"].get("knob") else "")
        + (":skipped" if str(e["payload"].get("detail", "")).startswith("skipped") else "")
        for e in actions
    ]
    if actions and not result.halted:
        # cleared: the run went on for a full revalidation window after the last action, and no
        # confirmed alarm followed (the loop's own rule: two alarms within the confirmation
        # window, or one strong alarm); single weak alarms are counted in alarms_after
        cfg = ctl.config
        last_action = max(e["step"] for e in actions)
        every = [(e["step"], e["payload"]) for e in events if e["kind"] == "alarm" and e["step"] > last_action]
        result.alarms_after = len(every)
        # explained alarms do not count (explained_by may be None: no diagnosis); the others by the loop's own rule
        after = [(s, p) for s, p in every if not p.get("explanation")]
        steps_after = [s for s, _ in after]
        confirmed = any(
            policy.confirmed(policy.AlarmFacts(s, p.get("score", 0), p.get("threshold") or 0), steps_after, cfg)
            for s, p in after
        )
        result.cleared_strict = result.steps - last_action >= cfg.revalidate_steps and not every
        result.cleared = result.steps - last_action >= cfg.revalidate_steps and not confirmed


def warm_worker(detector_path: str | None, diagnoser_path: str | None) -> None:
    """Ready a worker before its first timed arm: load detector and diagnoser and train a 2-step run with the loop
    on, untimed, so that no arm carries the process's one-time costs (imports, first kernels, caches)."""
    from rftfm.bench.runner import quiet

    quiet()
    info = RunInfo(run_id="warm-up", group="normal", task_group="arith_a", model_size="xs", seed=0,
                   control_or_fault="normal", num_steps=2)
    run_arm(info, "on", components=load_components(detector_path, diagnoser_path))


def _task(payload: tuple[dict[str, Any], str, str | None, str | None]) -> dict[str, Any]:
    info, arm, det, diag = payload
    from rftfm.bench.runner import quiet

    quiet()
    result, _ = run_arm(RunInfo.model_validate(info), arm, det, diag)
    return asdict(result)


def select_runs(
    runs: pl.DataFrame, per_type: int | None, healthy: int | None, limit: int | None, types: list[str] | None = None
) -> tuple[list[RunInfo], list[RunInfo]]:
    """Faulty runs (``per_type`` per type x strength, alternating onsets; only ``types`` if given) and healthy runs."""
    cols = set(RunInfo.model_fields)
    to_info = lambda row: RunInfo.model_validate({k: v for k, v in row.items() if k in cols and v is not None})  # noqa: E731
    faulty = runs.filter(pl.col("control_or_fault") == "fault").sort(
        "fault_type", "fault_strength", "onset_step", "seed"
    )
    if types:
        unknown = sorted(set(types) - set(FAULT_TYPES))
        if unknown:
            raise ValueError(f"unknown fault types {unknown}; known: {sorted(FAULT_TYPES)}")
        faulty = faulty.filter(pl.col("fault_type").is_in(types))
    chosen: list[RunInfo] = []
    for (_, _), group in faulty.group_by(["fault_type", "fault_strength"], maintain_order=True):
        rows = group.to_dicts()
        by_onset: dict[Any, list[dict]] = {}
        for row in rows:
            by_onset.setdefault(row["onset_step"], []).append(row)
        interleaved = [r for batch in _zip_longest(list(by_onset.values())) for r in batch]
        chosen += [to_info(r) for r in interleaved[: per_type or len(interleaved)]]
    if limit is not None:
        chosen = chosen[:limit]
    kinds = [runs.filter(pl.col("control_or_fault") == kind).sort("seed").to_dicts() for kind in ("normal", "control")]
    rows = [r for batch in _zip_longest(kinds) for r in batch]  # normal and control runs alternate
    healthy_runs = [to_info(r) for r in rows[: healthy if healthy is not None else len(rows)]]
    return chosen, healthy_runs


def _zip_longest(lists: list[list[dict]]) -> Iterable[list[dict]]:
    for i in range(max((len(x) for x in lists), default=0)):
        yield [x[i] for x in lists if i < len(x)]


def _tasks(faulty: list[RunInfo], healthy: list[RunInfo]) -> list[tuple[RunInfo, str]]:
    """(run, arm) trainings. A healthy run's loop-off arm *is* its clean twin, and faulty runs'
    clean arms are keyed by configuration and seed, so each clean training runs once. A healthy run's two
    arms are queued side by side (with two workers they train at the same time): the machine's speed drifts
    by tens of percent over a pass, and the overhead compares the two."""
    tasks = [(r, arm) for r in faulty for arm in FAULT_ARMS if arm != "clean"]
    twins = {clean_twin(r).run_id: r for r in [*faulty, *healthy]}
    for r in healthy:
        tasks += [(r, "on")] + ([(r, "clean")] if twins.pop(clean_twin(r).run_id, None) is not None else [])
    return tasks + [(r, "clean") for r in twins.values()]


def training_count(faulty: list[RunInfo], healthy: list[RunInfo]) -> int:
    """How many trainings :func:`evaluate` runs."""
    return len(_tasks(faulty, healthy))


def _key(info: RunInfo, arm: str) -> tuple[str, str]:
    return (clean_twin(info).run_id if arm == "clean" else info.run_id, arm)


def evaluate(
    faulty: list[RunInfo],
    healthy: list[RunInfo],
    detector_path: str | None = None,
    diagnoser_path: str | None = None,
    workers: int = 1,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    rows_path: Path | None = None,
) -> dict[str, Any]:
    """Run every arm of every selected run; returns raw rows and the summary tables.

    With ``rows_path`` every finished training is appended there as one JSON line, and the
    trainings already in it are not run again (an interrupted evaluation resumes).
    """
    results = read_rows(rows_path) if rows_path is not None else []
    done = {(r["run_id"], r["arm"]) for r in results}
    todo = [(r, arm) for r, arm in _tasks(faulty, healthy) if _key(r, arm) not in done]
    tasks = [(r.model_dump(mode="json"), arm, detector_path, diagnoser_path) for r, arm in todo]
    sink = open(rows_path, "a", encoding="utf-8") if rows_path is not None else None

    def finished(row: dict[str, Any]) -> None:
        results.append(row)
        if sink is not None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        if on_done:
            on_done(row)

    try:
        warm = (warm_worker, (detector_path, diagnoser_path))
        for row in run_in_pool(_task, [(t,) for t in tasks], workers, init=warm):
            finished(row)
    finally:
        if sink is not None:
            sink.close()
    return summarise(results, faulty, healthy)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier, possibly interrupted evaluation (a torn last line is dropped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


#: Arms a change to the loop cannot alter (no remediation runs in them), which an earlier
#: evaluation's summary can therefore hand to a new one instead of training them again.
REUSABLE_ARMS = ("clean", "none")


def rows_from_summary(
    summary: dict[str, Any], runs: Iterable[RunInfo], arms: Iterable[str] = REUSABLE_ARMS, healthy_off: bool = True
) -> list[dict[str, Any]]:
    """Rows (as :func:`evaluate` writes them) of ``arms`` of ``runs``, rebuilt from an earlier ``--json`` summary.

    Only :data:`REUSABLE_ARMS`: the clean arm (no loop) and the no-remediation arm (alert-only,
    no action, hence never cleared). A healthy run's loop-off arm is its clean twin's row;
    ``healthy_off=False`` leaves those out, so they are trained again beside the loop-on arms and
    the loop's overhead is timed within one pass.
    """
    arms = set(arms)
    if arms - set(REUSABLE_ARMS):
        raise ValueError(
            f"arms {sorted(arms - set(REUSABLE_ARMS))} depend on the loop's code; reusable: {list(REUSABLE_ARMS)}"
        )
    by_id = {r.run_id: r for r in runs}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for pair in summary.get("pairs", []):
        info = by_id.get(pair["run_id"])
        if info is None:
            continue
        if "none" in arms:
            keys = ("accuracy", "wall_s", "monitor_s", "steps", "interventions", "halted", "alarms_after", "actions")
            none = {k: pair[f"none_{k}"] for k in keys}
            none["final_accuracy"], none["actions"] = none.pop("accuracy"), list(none["actions"])
            rows[(info.run_id, "none")] = asdict(ArmResult(run_id=info.run_id, arm="none", **none))
        if "clean" in arms:
            twin = clean_twin(info).run_id
            rows[(twin, "clean")] = _clean_row(twin, pair["clean_accuracy"], pair["clean_wall_s"], pair["clean_steps"])
    for row in summary.get("healthy", []) if "clean" in arms and healthy_off else []:
        info = by_id.get(row["run_id"])
        if info is not None:
            twin = clean_twin(info).run_id
            rows[(twin, "clean")] = _clean_row(twin, row["accuracy_off"], row["wall_off_s"], info.num_steps)
    return list(rows.values())


def _clean_row(twin: str, final_accuracy: float, wall_s: float, steps: int) -> dict[str, Any]:
    """The row of a clean arm (no loop: nothing but its accuracy, time and length)."""
    return asdict(ArmResult(run_id=twin, arm="clean", final_accuracy=final_accuracy, wall_s=wall_s, steps=steps))


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def repaired(cleared: bool, final_accuracy: float, clean_accuracy: float, tolerance: float = TOLERANCE) -> bool:
    """The repair rule: the anomaly cleared after an intervention (``cleared``: no halt, no confirmed alarm for a
    revalidation window after the last action) and final accuracy >= ``tolerance`` x the matched clean run's."""
    return bool(cleared and final_accuracy >= tolerance * clean_accuracy)


def summarise(
    results: list[dict[str, Any]], faulty: list[RunInfo], healthy: list[RunInfo], tolerance: float = TOLERANCE
) -> dict[str, Any]:
    by = {(r["run_id"], r["arm"]): r for r in results}
    pairs = []
    for info in faulty:
        arms = {arm: by.get((clean_twin(info).run_id if arm == "clean" else info.run_id, arm)) for arm in FAULT_ARMS}
        if any(v is None for arm, v in arms.items() if arm not in OPTIONAL_ARMS):
            continue
        clean_acc = arms["clean"]["final_accuracy"]
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "fault_family": info.fault_family or FAULT_TYPES[info.fault_type].family,
            "fault_type": info.fault_type,
            "setting": info.fault_strength,
            "onset_step": info.onset_step,
            "knob_repairable": FAULT_TYPES[info.fault_type].knob_repairable,
            "halt_only": ends_in_halt_only(info.fault_type),
            "clean_accuracy": clean_acc,
            "detected": arms["loop"]["alarms"] > 0,
            "diagnosed": arms["loop"]["diagnosed"],
            "diagnosis_correct": arms["loop"]["diagnosed"] == info.fault_type,
        }
        for arm in [a for a in FAULT_ARMS if a != "clean" and arms[a] is not None]:
            a = arms[arm]
            ok_acc = a["final_accuracy"] >= tolerance * clean_acc
            row[f"{arm}_accuracy"] = a["final_accuracy"]
            row[f"{arm}_accuracy_ok"] = ok_acc
            row[f"{arm}_interventions"] = a["interventions"]
            row[f"{arm}_halted"] = a["halted"]
            row[f"{arm}_cleared"] = a["cleared"]
            row[f"{arm}_alarms_after"] = a["alarms_after"]
            row[f"{arm}_success_strict"] = repaired(a["cleared_strict"], a["final_accuracy"], clean_acc, tolerance)
            row[f"{arm}_success"] = repaired(a["cleared"], a["final_accuracy"], clean_acc, tolerance)
            row[f"{arm}_wall_s"] = a["wall_s"]
            row[f"{arm}_steps"] = a["steps"]  # more than planned after a rollback replayed what it discarded
            row[f"{arm}_monitor_s"] = a["monitor_s"]
            row[f"{arm}_actions"] = a["actions"]
        row["clean_wall_s"], row["clean_steps"] = arms["clean"]["wall_s"], arms["clean"]["steps"]
        pairs.append(row)
    healthy_rows = []
    for info in healthy:
        off, on = by.get((clean_twin(info).run_id, "clean")), by.get((info.run_id, "on"))
        if off is None or on is None:
            continue
        healthy_rows.append(_healthy_row(info, off, on))
    return {"tolerance": tolerance, "pairs": pairs, "healthy": healthy_rows, "tables": tables(pairs, healthy_rows)}


def _healthy_row(info: RunInfo, off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """A healthy run's summary row from its loop-off (clean) and loop-on arms."""
    return {
        "run_id": info.run_id,
        "kind": info.control_or_fault,
        "alarms": on["alarms"],
        "interventions": on["interventions"],
        "halted": on["halted"],
        "accuracy_off": off["final_accuracy"],
        "accuracy_on": on["final_accuracy"],
        "wall_off_s": off["wall_s"],
        "wall_on_s": on["wall_s"],
        "monitor_s": on["monitor_s"],
    }


def _group(pairs: pl.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    if pairs.height == 0:
        return []
    out = (
        pairs.group_by(keys, maintain_order=True)
        .agg(
            pl.len().alias("runs"),
            (pl.col("detected").mean() * 100).round(1).alias("detected_%"),
            (pl.col("diagnosis_correct").mean() * 100).round(1).alias("diagnosis_correct_%"),
            (pl.col("loop_success").mean() * 100).round(1).alias("loop_repair_%"),
            (pl.col("generic_success").mean() * 100).round(1).alias("generic_repair_%"),
            *_optional(pairs, "trainside_success", lambda c: (c.mean() * 100).round(1), "trainside_repair_%"),
            (pl.col("loop_success_strict").mean() * 100).round(1).alias("loop_repair_strict_%"),
            (pl.col("none_accuracy_ok").mean() * 100).round(1).alias("none_acc_ok_%"),
            (pl.col("loop_accuracy_ok").mean() * 100).round(1).alias("loop_acc_ok_%"),
            (pl.col("generic_accuracy_ok").mean() * 100).round(1).alias("generic_acc_ok_%"),
            (pl.col("loop_cleared").mean() * 100).round(1).alias("loop_cleared_%"),
            (pl.col("loop_halted").mean() * 100).round(1).alias("loop_halted_%"),
            pl.col("clean_accuracy").mean().round(3).alias("clean_acc"),
            pl.col("none_accuracy").mean().round(3).alias("none_acc"),
            pl.col("loop_accuracy").mean().round(3).alias("loop_acc"),
            pl.col("generic_accuracy").mean().round(3).alias("generic_acc"),
            *_optional(pairs, "trainside_accuracy", lambda c: c.mean().round(3), "trainside_acc"),
            pl.col("loop_interventions").mean().round(2).alias("loop_interventions"),
        )
        .sort(keys)
    )
    return out.to_dicts()


def _optional(frame: pl.DataFrame, column: str, agg: Callable[[pl.Expr], pl.Expr], alias: str) -> list[pl.Expr]:
    """``agg`` of ``column`` as ``alias`` when the frame has it (an optional arm's), else nothing."""
    return [agg(pl.col(column)).alias(alias)] if column in frame.columns else []


def tables(pairs: list[dict[str, Any]], healthy: list[dict[str, Any]]) -> dict[str, Any]:
    frame = pl.DataFrame(pairs) if pairs else pl.DataFrame()
    out: dict[str, Any] = {}
    if frame.height:
        frame = frame.with_columns(
            pl.when(pl.col("knob_repairable"))
            .then(pl.lit("knob-repairable"))
            .otherwise(pl.lit("halt (code fault)"))
            .alias("class")
        )
        out["by_class_setting"] = _group(frame, ["class", "setting"])
        out["by_setting_all_types"] = _group(frame, ["setting"])
        out["by_family_setting"] = _group(frame, ["fault_family", "setting"])
        out["by_type_setting"] = _group(frame, ["fault_type", "setting"])
        out["by_onset"] = _group(frame, ["class", "onset_step"])
        out["overhead_faulty"] = {
            "monitor_share_%": _pct(frame["loop_monitor_s"].sum() / max(frame["loop_wall_s"].sum(), 1e-9)),
            "wall_vs_clean_%": _pct(frame["loop_wall_s"].sum() / max(frame["clean_wall_s"].sum(), 1e-9) - 1),
        }
        if "loop_steps" in frame.columns:  # (JSON written before replays were recorded has no step counts)
            out["overhead_faulty"]["steps_vs_clean_%"] = _pct(
                frame["loop_steps"].sum() / max(frame["clean_steps"].sum(), 1) - 1
            )
            out["overhead_faulty"]["runs_replaying_%"] = _pct(
                float((frame["loop_steps"] > frame["clean_steps"]).mean())
            )
    if healthy:
        h = pl.DataFrame(healthy)
        out["healthy"] = {
            "runs": h.height,
            "no_intervention_%": _pct(float((h["interventions"] == 0).mean())),
            "no_alarm_%": _pct(float((h["alarms"] == 0).mean())),
            "halted": int(h["halted"].sum()),
            "accuracy_off": round(float(h["accuracy_off"].mean()), 4),
            "accuracy_on": round(float(h["accuracy_on"].mean()), 4),
            "accuracy_loss_runs": int((h["accuracy_on"] < h["accuracy_off"] - 1e-9).sum()),
            "wall_off_s": round(float(h["wall_off_s"].sum()), 2),
            "wall_on_s": round(float(h["wall_on_s"].sum()), 2),
            "overhead_%": _pct(float(h["wall_on_s"].sum() / max(h["wall_off_s"].sum(), 1e-9) - 1)),
            "monitor_share_%": _pct(float(h["monitor_s"].sum() / max(h["wall_off_s"].sum(), 1e-9))),
        }
    return out


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``columns`` (those no row has, an optional arm's an evaluation lacks, are left out)."""
    if not rows:
        return "_no rows_\n"
    columns = [c for c in columns if any(c in row for row in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


GROUP_COLUMNS = [
    "runs",
    "detected_%",
    "diagnosis_correct_%",
    "loop_repair_%",
    "generic_repair_%",
    "trainside_repair_%",
    "loop_repair_strict_%",
    "none_acc_ok_%",
    "loop_acc_ok_%",
    "generic_acc_ok_%",
    "loop_cleared_%",
    "loop_halted_%",
    "clean_acc",
    "none_acc",
    "loop_acc",
    "generic_acc",
    "trainside_acc",
    "loop_interventions",
]


def wilson_interval(successes: int, trials: int) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate, in percent (scipy's binomial test)."""
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return 100 * ci.low, 100 * ci.high


def paired_interval(diffs: list[float]) -> tuple[float, float]:
    """95 % t interval of the mean of paired differences (scipy); the value itself when they all agree."""
    import numpy as np
    from scipy.stats import ttest_1samp

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.all(d == d[0]):  # no spread: the t interval is undefined
        return (float(d[0]), float(d[0])) if d.size else (0.0, 0.0)
    ci = ttest_1samp(d, 0.0).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def _repair_lines(t: dict[str, Any]) -> list[str]:
    """The knob-repairable repair targets, easy and hard, with and (when measured) without an eval callable."""
    lines = []
    cls = {(r["class"], r["setting"]): r for r in t.get("by_class_setting", [])}
    for setting, goal in (("easy", 85.0), ("hard", 70.0)):
        r = cls.get(("knob-repairable", setting))
        if r is None:
            lines.append(f"- knob-repairable {setting}: no runs evaluated")
            continue
        met = r["loop_repair_%"] >= goal and r["loop_repair_%"] > r["generic_repair_%"]
        low, high = wilson_interval(round(r["loop_repair_%"] * r["runs"] / 100), r["runs"])
        lines.append(
            f"- repair success, knob-repairable, {setting}: {r['loop_repair_%']} % of {r['runs']} (95 % CI "
            f"{low:.1f}-{high:.1f}; "
            f"target >= {goal:.0f} %; generic baseline {r['generic_repair_%']} %) -> **{'met' if met else 'not met'}**"
        )
        if r.get("trainside_repair_%") is not None:
            lines.append(
                f"  - the same runs without an eval callable (`trainside`: the loop never sees eval accuracy): "
                f"{r['trainside_repair_%']} %"
            )
    return lines


def code_fault_caught(pair: dict[str, Any]) -> bool:
    """A code-fault run the loop halted, or alerted on with the right family."""
    diagnosed = pair["diagnosed"]
    right_family = diagnosed in FAULT_TYPES and FAULT_TYPES[diagnosed].family == pair["fault_family"]
    return bool(pair["loop_halted"]) or (bool(pair["detected"]) and right_family)


def _hurt_lines(pairs: list[dict[str, Any]]) -> list[str]:
    """The same counts on the faulty runs the fault hurt (no-remediation final accuracy below the tolerance of the
    clean twin's). Reported beside the targets, not instead: a fault that leaves a run as good as its clean twin
    may leave no trace to see, and a repair of it cannot be told from none."""
    hurt = [p for p in pairs if not p["none_accuracy_ok"]]
    knob = [p for p in hurt if p["knob_repairable"]]
    code = [p for p in hurt if p["halt_only"]]
    parts = []
    if knob:
        parts.append(f"knob-repairable repaired {sum(bool(p['loop_success']) for p in knob)} of {len(knob)}")
    if code:
        caught = sum(map(code_fault_caught, code))
        parts.append(f"code faults halted or alerted with the right family {caught} of {len(code)}")
    if not parts:
        return []
    return [
        f"- on the {len(hurt)} of {len(pairs)} faulty runs the fault hurt (without the loop, final accuracy below "
        "the tolerance of the clean twin's): " + "; ".join(parts)
    ]


def _worse_lines(pairs: list[dict[str, Any]]) -> list[str]:
    """Faulty runs an arm left worse than no remediation did: not halted, and final accuracy below the tolerance
    of the no-remediation arm's and of the clean twin's (a misdiagnosed knob kept, a rollback that cost more than it
    saved; a run brought back to its clean twin's accuracy from a fault that happened to help is not worse). No
    target; a loop that acts must not make a fault's damage larger."""
    counts = []
    for arm in ("loop", "trainside", "generic"):
        if not all(f"{arm}_accuracy" in p for p in pairs):
            continue
        worse = [
            p
            for p in pairs
            if not p[f"{arm}_halted"]
            and p[f"{arm}_accuracy"] < TOLERANCE * min(p["none_accuracy"], p["clean_accuracy"])
        ]
        names = ", ".join(f"{p['fault_type']} {p['setting']}" for p in worse)
        counts.append(f"{arm} {len(worse)}" + (f" ({names})" if names else ""))
    if not pairs or not counts:
        return []
    return [
        f"- faulty runs left worse than without remediation (not halted, final accuracy below {TOLERANCE:g} x the "
        f"no-remediation arm's and the clean twin's), of {len(pairs)}: " + "; ".join(counts)
    ]


def target_status(summary: dict[str, Any]) -> list[str]:
    t = summary["tables"]
    lines = _repair_lines(t)
    every = {r["setting"]: r for r in t.get("by_setting_all_types", [])}
    if "hard" in every:
        r = every["hard"]
        lines.append(
            f"- for comparison, all {r['runs']} hard runs of every type (code faults included, which end in halt and "
            "never count): "
            f"{r['loop_repair_%']} % repaired (published RFT-FM: 46.25 % on hard faults, judged only by a lower "
            "anomaly score)"
        )
    code = [p for p in summary.get("pairs", []) if p.get("halt_only")]
    if code:
        caught = sum(map(code_fault_caught, code))
        low, high = wilson_interval(caught, len(code))
        lines.append(
            f"- code faults halted, or alerted with the right family: {_pct(caught / len(code))} % of {len(code)} "
            f"(95 % CI {low:.1f}-{high:.1f}; target >= 90 %) -> **{'met' if caught / len(code) >= 0.9 else 'not met'}**"
        )
    lines += _hurt_lines(summary.get("pairs", []))
    lines += _worse_lines(summary.get("pairs", []))
    h = t.get("healthy")
    if h:
        ok = h["no_intervention_%"] >= 99.0 and h["halted"] == 0
        lines.append(
            f"- healthy runs without an intervention: {h['no_intervention_%']} % of {h['runs']}, {h['halted']} "
            f"halted (target >= 99 %, never a halt) -> **{'met' if ok else 'not met'}**"
        )
        diffs = [r["accuracy_on"] - r["accuracy_off"] for r in summary.get("healthy", []) if isinstance(r, dict)]
        low, high = paired_interval(diffs)
        ok = low <= 0.0 <= high or low > 0.0  # no loss the noise cannot explain
        lines.append(
            f"- healthy accuracy with / without the loop: {h['accuracy_on']} / {h['accuracy_off']}, difference "
            f"{h['accuracy_on'] - h['accuracy_off']:+.4f} (95 % CI {low:+.4f} to {high:+.4f}; "
            f"{h['accuracy_loss_runs']} runs lost accuracy) -> **{'met' if ok else 'not met'}**"
        )
        ok = h["overhead_%"] is not None and h["overhead_%"] <= 10.0
        lines.append(
            f"- compute overhead on healthy runs (wall time, loop on vs off): {h['overhead_%']} % "
            f"(monitor's own share {h['monitor_share_%']} %; target <= 10 %) -> **{'met' if ok else 'not met'}**; "
            "each worker loads detector and diagnoser and trains a 2-step run untimed before its first arm"
        )
    return lines


INTRO = """# Remediation: the RFT-FM closed loop

*This file is written by `rftfm bench evaluate remediation ... --markdown docs/remediation.md` (or re-rendered from
the raw rows with `--from-json docs/results/remediation-seed.json`); do not edit the tables by hand.*

The loop (`rftfm.fm.loop.Controller`, inside TRL as `rftfm.integrations.trl_callback.RFTFMCallback`) is a state
machine that follows the rules of `rftfm.fm.policy` (each a pure function, unit-tested without a trainer). Every
step: detector -> on a confirmed alarm (two alarms within three logged records, or one with score >= 2x threshold,
or one while a knob push is in effect, when the detector's threshold is also halved: a change nobody explained doubles
the odds of a fault) the diagnoser -> the remediator's next rung (`rftfm.fm.remediate`) -> revalidation
over 3 steps (no alarm: *kept*; alarm, or eval accuracy 0.2 below the checkpoint's: *escalated* to the next rung).

**What it will not do on its own.** An alarm nobody can explain (the diagnoser abstains and no knob changed) is
reported, not acted on (`Remediator(blind_interventions=1)` restores the earlier single blind rollback + LR halving
per run). A rung whose knob changes would leave every knob as it is (the healthy value is already set: the diagnosed
cause is not in the trainer's settings) is reported, not acted on. In a run without any eval accuracy, a rung acts
only on a diagnosis at p >= 0.5 or to undo a knob push. A halt needs a diagnosis: a code fault (no knob rung) halts
when the diagnosis puts p >= 0.8 on the types of its family that end the same way (an advantage sign bug or a
broken normalisation: rollback + halt either way), or when eval accuracy fell since the checkpoint; a knob ladder's
final halt only on a measured fall in eval accuracy; otherwise the loop reports the incident and goes alert-only.
Alert-only after standing down means "not sure yet": a later confirmed alarm whose diagnosis settles a code fault
(p >= 0.8 as above -- a numerical blow-up once its numbers turn NaN, a broken advantage invariant) is still rolled
back and halted (`policy.settled_code_fault`); after an error in the loop nothing is. No new rung starts when fewer
steps remain than the revalidation needs. `RFTFMCallback(..., remediate=False)` is alert-only from the start, for
good.

**What the user has.** With `eval_fn(model) -> float` (e.g. `rftfm.integrations.trl_eval.RewardEval`, built from
TRL's `eval_dataset` and the trainer's reward functions) the loop measures held-out accuracy at the start, every
`eval_every` steps, and whenever a rollback, halt or revalidation decision needs the current value; without it, and
without `eval_accuracy` in the logs, it decides from train-side metrics alone and its incident log says so.

**Knob pushes.** The loop reads the trainer's knobs every step and notes every change it did not make itself. A new
incident that follows such a change within 12 logged records first gets "roll back to before the change and undo it"
(`DRIFT_RUNG`); the last checkpoint before the push is pinned against pruning. When an escalation brings a different
diagnosis, it replaces the type being repaired only at p >= 0.8. After a knob repair of type T, an alarm is recorded
as explained, not acted on, when its strong evidence (|z| >= 2) lies only in T's upstream signals
(`UPSTREAM_SIGNALS`), or, after a pushed knob was undone, when it only repeats the incident's own deviations while
eval accuracy has not fallen (the run is catching up).

**Rollback as a resume.** Checkpoints (model safetensors, optimiser / scheduler / RNG state, checksummed, written
atomically) are taken every 2 healthy steps (at the first logged step past each multiple when the trainer logs every
few steps); a rollback restores the newest valid one from before the weights that generated the first deviating
rollout (checkpoint <= first deviating step - 2; the first deviating step is at most 4 steps before the first alarm,
or the step of a knob push), or the oldest one kept. Weights, optimiser, scheduler and RNG come from the checkpoint,
the discarded steps' prompt batches come again before any new one (`BatchReplayMixin`), and the run is extended by
the steps it discarded (up to half the planned steps per run in all): an undone push resumes into exactly the clean
run (tests check the weights bit for bit, also with a warm-up, gradient accumulation and logging_steps > 1). A knob
rung rolls back only when eval accuracy fell since that checkpoint, or 0.1 below its best 2-step mean since it, or
when it sits at its ceiling (>= 0.98) and the discarded steps can all be replayed, or when the rung undoes a push the
checkpoint predates. Detector and diagnoser see the run's *effective* step after a rollback. Actions go only through
trainer knobs (`rftfm.knobs`), rollback, halt, or a backup verifier / tool the user registered -- never
through the fault injector, which keeps acting. At most 3 interventions per run. Any exception in the loop is
recorded as an `error` incident and the loop degrades to alert-only; the trainer never sees it.

## Playbook (from `rftfm.fm.playbook.PLAYBOOK`)

"""


SOURCES = """
Sources: [ckpt] rollback to the last good checkpoint and lower the LR after loss spikes (OPT-175B logbook,
Zhang et al. 2022; BLOOM, Le Scao et al. 2022; PaLM, Chowdhery et al. 2022). [kl] KL penalty to the reference
(Ouyang et al. 2022; Gao et al. 2023). [temp] GRPO rollouts at temperature 1.0 (DeepSeekMath, Shao et al. 2024;
DAPO, Yu et al. 2025). [dapo] overlong filtering / masking truncated completions, token-level loss, dynamic sampling
(DAPO).
[drgrpo] no std scaling (Dr. GRPO, Liu et al. 2025). [clip] tighter clip range against off-policy rollouts
(PPO, Schulman et al. 2017; Yao et al. 2025 on truncated importance sampling). [rep] repetition penalty and EOS
against degenerate loops (Keskar et al. 2019; Holtzman et al. 2020). [norm] reward normalisation (Huang et al. 2022,
"The 37 implementation details of PPO").
[opsm] off-policy sequence masking (DeepSeek-V3.2, 2025; TRL's `off_policy_mask_threshold`). [ens] averaging several
reward evaluations against a noisy reward (reward-model ensembles, Coste et al. 2024; Eisenstein et al. 2024). [retry]
retrying transient tool / sandbox failures (the retry setting of agent-RL sandboxes).
"""


def playbook_markdown() -> str:
    from rftfm.fm.playbook import PLAYBOOK, describe_rung

    rows = []
    for name, rungs in PLAYBOOK.items():
        ftype = FAULT_TYPES[name]
        rows.append(
            {
                "type": name,
                "family": ftype.family,
                "class": "knob-repairable" if ftype.knob_repairable else "halt (code fault)",
                "ladder": " -> ".join(f"({i + 1}) {describe_rung(r)}" for i, r in enumerate(rungs)),
                "sources": " ".join(sorted({src for r in rungs for src in r.source.split()})),
            }
        )
    return _md_table(rows, ["type", "family", "class", "ladder", "sources"])


def markdown(summary: dict[str, Any], command: str, note: str | None = None) -> str:
    t = summary["tables"]
    out = [
        INTRO,
        playbook_markdown(),
        SOURCES,
        "\nBackup rungs apply only when the user registered a backup verifier / tool "
        "(none in this evaluation, so those rungs are skipped).\n\n## Results\n\n",
        f"Produced by `{command}`.\n",
        f"\n{note}\n\n" if note else "",
        f"Repair success = intervention, anomaly cleared after it (>= 3 steps after the last action with no confirmed "
        "alarm -- two alarms within 3 logged records "
        "or one >= 2x threshold, the loop's own acting rule; alarms whose evidence lies only in the "
        "upstream signals of the "
        f"repaired cause (`UPSTREAM_SIGNALS`, e.g. reward sd under reward noise) or only repeat the deviations of an "
        "incident whose pushed knob was undone, with eval accuracy holding, do not count -- and not halted) and final "
        "eval accuracy "
        f">= {int(summary['tolerance'] * 100)} % of the matched clean run's. `none` = faulty run without remediation, "
        "`generic` = rollback + halve the LR on every alarm, `loop` = RFT-FM playbook with an eval callable (the "
        "engine's held-out evaluation, also before the first step), `trainside` = the same loop "
        "without the run's eval accuracy (a user without an eval callable). `*_acc_ok_%` = final accuracy "
        "within tolerance. "
        "`loop_repair_strict_%` counts a repair only when no alarm at all (explained or unconfirmed) followed the "
        "last action.\n",
        "\n### Targets\n",
        "\n".join(target_status(summary)) + "\n",
        "\n### All fault types by setting\n",
        _md_table(t.get("by_setting_all_types", []), ["setting"] + GROUP_COLUMNS),
        "\n### By class (knob-repairable vs code faults that end in halt) and setting\n",
        _md_table(t.get("by_class_setting", []), ["class", "setting"] + GROUP_COLUMNS),
        "\n### By family and setting\n",
        _md_table(t.get("by_family_setting", []), ["fault_family", "setting"] + GROUP_COLUMNS),
        "\n### By type and setting\n",
        _md_table(t.get("by_type_setting", []), ["fault_type", "setting"] + GROUP_COLUMNS),
        "\n### By onset step\n",
        _md_table(t.get("by_onset", []), ["class", "onset_step"] + GROUP_COLUMNS),
    ]
    if "healthy" in t:
        out += [
            "\n### Healthy runs (normal + control) with the loop on vs off\n",
            _md_table([t["healthy"]], list(t["healthy"])),
        ]
    if "overhead_faulty" in t:
        out += ["\n### Faulty runs: loop cost\n", _md_table([t["overhead_faulty"]], list(t["overhead_faulty"]))]
    return "".join(out)


def load_runs(data: Path) -> pl.DataFrame:
    from rftfm.io.loader import load_benchmark

    return load_benchmark(data).runs
