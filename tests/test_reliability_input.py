"""Bad input never crashes rftfm and never loses a good record (hypothesis property tests).

Every reader of outside data is fed NaN, +-inf, missing and extra fields, wrong types,
truncated and malformed lines, huge numbers, unicode (lone surrogates included), out-of-order
and duplicate steps and empty trajectory lists. The contract checked here: each bad input gets
a clear typed error (pydantic ``ValidationError``) or a counted skip (``malformed_lines``,
``bad_values``, ``out_of_order``, ``skipped_steps``), every good record comes out with its
values, and nothing else is ever raised. Example counts are modest for CI; the bigger sweep
is ``scripts/fuzz_inputs.py``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rftfm.fm.detect import Detector
from rftfm.fm.loop import Controller, ControllerConfig
from rftfm.integrations.trl_callback import step_record_from_logs
from rftfm.io.adapters import StepParser, read_log
from rftfm.io.faultbench import STEP_FILE, TRAJ_FILE, step_to_published, trajectory_to_published
from rftfm.io.loader import load_benchmark
from rftfm.records import STEP_METRICS, StepRecord, TrajectoryRecord
from rftfm.testing import synthetic_detector

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# --- strategies -------------------------------------------------------------------------------

nasty_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0]),
)
huge_ints = st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.just(10**400), st.just(-(10**400)))
unicode_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["\ud800", "é😀", "<script>", "\x00", ""])
scalars = st.one_of(st.none(), st.booleans(), nasty_floats, huge_ints, unicode_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unicode_text, inner, max_size=3), max_leaves=8)
metric_names = st.sampled_from(STEP_METRICS + ("reward", "kl", "loss", "global_step", "step", "extra", "run_id"))
# "bad" values: anything that is not a finite number a schema field could hold
wrong_types = st.one_of(unicode_text, st.lists(st.integers(), max_size=3), st.dictionaries(unicode_text, st.integers(), max_size=2),
                        st.just(10**400), st.booleans())
good_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def good_step(run_id: str, step: int, values: list[float]) -> StepRecord:
    return StepRecord(run_id=run_id, step=step, **dict(zip(STEP_METRICS, values)))


def json_line(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


# --- record models ----------------------------------------------------------------------------


@SETTINGS
@given(st.dictionaries(metric_names | unicode_text, json_values, max_size=8), st.sampled_from([StepRecord, TrajectoryRecord]))
def test_record_models_accept_or_raise_validation_error_only(data: dict, model: type) -> None:
    try:
        record = model.model_validate(data)
    except ValidationError:
        return
    for name in STEP_METRICS if model is StepRecord else ():
        assert getattr(record, name) is None or isinstance(getattr(record, name), float)


@SETTINGS
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_record_json_parsing_raises_validation_error_only(text: str) -> None:
    for model in (StepRecord, TrajectoryRecord):
        try:
            model.model_validate_json(text)
        except ValidationError:
            pass


@SETTINGS
@given(st.lists(good_values, min_size=len(STEP_METRICS), max_size=len(STEP_METRICS)), st.integers(0, 10**6), st.integers(1, 200))
def test_truncated_record_json_is_a_validation_error(values: list[float], step: int, cut: int) -> None:
    text = good_step("r", step, values).model_dump_json()
    with pytest.raises(ValidationError):
        StepRecord.model_validate_json(text[: max(0, len(text) - cut)])


# --- the loader's JSONL path ------------------------------------------------------------------

BAD_LINE_KINDS = ("truncated", "not_a_dict", "text", "bad_index", "deep")


def bad_line(kind: str, good: str, draw_value: Any) -> str:
    if kind == "truncated":
        return good[: max(1, len(good) // 2)]
    if kind == "not_a_dict":
        return json.dumps([draw_value, 1]) if not isinstance(draw_value, str) else json.dumps(draw_value)
    if kind == "text":
        return "step; reward=" + "".join(c for c in str(draw_value) if c not in "\r\n{") + " ]"
    if kind == "bad_index":  # a step that is not a non-negative integer (a dict would be flattened away: missing)
        bad = -abs(draw_value) - 1 if isinstance(draw_value, int) and not isinstance(draw_value, bool) else draw_value
        return json.dumps({"step": "x" if isinstance(bad, dict) or bad is None else bad, "metrics": {"reward": 0.5}})
    return "[" * 5000 + "]" * 5000  # nesting deeper than the JSON parser's recursion limit


step_rows = st.lists(
    st.tuples(st.integers(0, 50), st.lists(good_values, min_size=3, max_size=3), st.one_of(st.none(), wrong_types)),
    min_size=0, max_size=12,
)
bad_rows = st.lists(st.tuples(st.sampled_from(BAD_LINE_KINDS), st.integers(0, 10**6), wrong_types), max_size=6)


def write_run(root: Path, step_lines: list[str], traj_lines: list[str]) -> None:
    sub = root / "normal" / "run-a" / "train"
    sub.mkdir(parents=True)
    (sub / STEP_FILE).write_bytes(("\n".join(step_lines) + "\n").encode("utf-8", "surrogatepass"))
    (sub / TRAJ_FILE).write_bytes(("\n".join(traj_lines) + "\n").encode("utf-8", "surrogatepass"))


@SETTINGS
@given(step_rows, bad_rows, st.randoms(use_true_random=False))
def test_loader_jsonl_keeps_every_good_line_and_counts_every_bad_one(rows, bads, rnd) -> None:
    """Good lines (any step order, duplicates, NaN / inf, wrong-typed metrics) all load; bad lines are counted."""
    lines, expected, bad_values = [], [], 0
    for step, values, wrong in rows:
        record = good_step("run-a", step, [values[0], values[1], values[2]])
        obj = step_to_published(record)
        obj["metrics"]["entropy"] = math.nan  # NaN is missing, never an error
        obj["metrics"]["my_new_metric"] = values[0]  # extra fields are kept
        reward = values[0]
        if wrong is not None:
            obj["metrics"]["reward_mean"] = wrong  # a wrong type: the value is missing, the record stays
            reward = None
            bad_values += not isinstance(wrong, dict)  # a dict is flattened into extra columns, not a bad value
        lines.append(json_line(obj))
        expected.append((step, reward))
    template = lines[0] if lines else json_line(step_to_published(good_step("run-a", 1, [0.1, 0.2, 0.3])))
    malformed = 0
    for kind, number, value in bads:
        lines.insert(rnd.randint(0, len(lines)), bad_line(kind, template, value if kind != "bad_index" or number % 2 else number))
        malformed += 1
    good_traj = TrajectoryRecord(run_id="run-a", rollout_step=1, prompt_id="p\ud800<script>", group_id=0, reward=1.0,
                                 completion="é😀\x00" * 3)
    traj_lines = [json_line(trajectory_to_published(good_traj)), "{\"metrics\": {\"reward\": 1", "[1, 2]"]
    with tempfile.TemporaryDirectory() as tmp:
        write_run(Path(tmp), lines, traj_lines)
        bench = load_benchmark(tmp)
    report = bench.report
    if not expected:
        assert bench.steps.height == 0 and {"run_id", "step"} <= set(bench.steps.columns)
        return
    assert report.malformed_lines == malformed + 2  # the two bad trajectory lines
    assert report.bad_values == bad_values
    rewards = bench.steps["reward_mean"].to_list() if "reward_mean" in bench.steps.columns else [None] * bench.steps.height
    got = sorted(zip(bench.steps["step"].to_list(), rewards), key=lambda x: (x[0], x[1] is None, x[1]))
    want = sorted(expected, key=lambda x: (x[0], x[1] is None, x[1]))
    assert len(got) == len(want)  # no good line lost (duplicates and out-of-order steps kept)
    for (gs, gr), (ws, wr) in zip(got, want):
        assert gs == ws and (gr == pytest.approx(wr) if wr is not None else gr is None)
    assert bench.steps["entropy"].null_count() == len(expected)
    assert "my_new_metric" in " ".join(bench.steps.columns)
    assert bench.trajectories.height == 1 and bench.trajectories["reward"].to_list() == [1.0]


# --- framework adapters -----------------------------------------------------------------------


def format_line(fmt: str, step: int, reward: float, kl: float) -> str:
    if fmt == "jsonl":
        return json.dumps({"step": step, "reward_mean": reward, "kl": kl, "unicodé😀": 1.0})
    if fmt == "trl":
        return json.dumps({"loss": 0.1, "reward": reward, "kl": kl, "step": step, "epoch": 0.1})
    if fmt == "verl":
        return json.dumps({"step": step, "data": {"critic/score/mean": reward, "actor/kl_loss": kl, "extra/x": [1, 2]}})
    return json.dumps({"step": step, "metrics": {"reward": reward, "kl": kl, "weird": {"a": "<b>"}}})


@SETTINGS
@given(st.sampled_from(["auto", "jsonl", "trl", "verl", "openrlhf"]), st.text(max_size=300))
def test_step_parser_never_raises_on_any_line(fmt: str, line: str) -> None:
    parser = StepParser(fmt, run_id="r")
    for candidate in (line, "{" + line, '{"step": 1, "reward_mean": ' + line + "}", "step:" + line + " - kl:" + line):
        record = parser.parse_line(candidate)
        assert record is None or isinstance(record, StepRecord)
    stats = parser.stats
    assert stats.steps + stats.non_step_lines + stats.malformed_lines <= stats.lines


@SETTINGS
@given(st.sampled_from(["jsonl", "trl", "verl", "openrlhf"]), st.dictionaries(unicode_text | metric_names, json_values, max_size=8))
def test_step_parser_on_any_json_object(fmt: str, obj: dict) -> None:
    parser = StepParser(fmt, run_id="r")
    for wrapped in (obj, {"step": 3, "metrics": obj}, {"step": 3, "data": obj}):
        record = parser.parse_line(json.dumps(wrapped, allow_nan=True))
        if record is not None:
            values = [getattr(record, m) for m in STEP_METRICS] + list(record.extra.values())
            assert all(v is None or math.isfinite(v) for v in values)  # NaN / inf / huge never reach a record


@SETTINGS
@given(st.sampled_from(["jsonl", "trl", "verl", "openrlhf"]), st.lists(st.tuples(st.integers(0, 40), good_values), max_size=15),
       st.lists(st.sampled_from(["truncated", "not_a_dict", "text", "huge", "nan", "empty_obj"]), max_size=6), st.randoms(use_true_random=False))
def test_log_adapters_keep_every_good_step_and_count_the_rest(fmt, rows, bads, rnd) -> None:
    lines = [format_line(fmt, step, reward, 0.01) for step, reward in rows]
    template = format_line(fmt, 1, 0.5, 0.01)
    inserted = []
    for kind in bads:
        line = {"truncated": template[:-3], "not_a_dict": "[1, 2, 3]", "text": "loading model weights ... done",
                "huge": '{"step": 1' + "0" * 5000 + ', "reward_mean": 1}', "nan": template.replace("0.01", "NaN"),
                "empty_obj": "{}"}[kind]
        if kind == "nan":  # a good step whose KL is NaN: kept, KL missing
            continue
        inserted.append(kind)
        lines.insert(rnd.randint(1, len(lines)) if lines else 0, line)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        events, stats = read_log(path, fmt=fmt, run_id="r")
    # steps must increase; a repeated or earlier step is a counted skip
    kept, last = [], -1
    for step, reward in rows:
        if step > last:
            kept.append((step, reward))
            last = step
    assert [(e[0].step, e[0].reward_mean) for e in events] == [(s, pytest.approx(r)) for s, r in kept]
    assert stats.out_of_order == len(rows) - len(kept)
    assert stats.malformed_lines >= sum(k in ("truncated", "not_a_dict", "huge") for k in inserted)


@SETTINGS
@given(st.dictionaries(unicode_text | metric_names, json_values, max_size=10), st.integers(-(10**6), 10**20))
def test_trl_callback_record_from_any_log_dict(logs: dict, step: int) -> None:
    record = step_record_from_logs("run", step, logs)
    assert record.step >= 0
    assert all(v is None or math.isfinite(v) for v in [getattr(record, m) for m in STEP_METRICS] + list(record.extra.values()))


# --- the monitor: Detector.observe and the closed loop's per-step path ------------------------


def fit_small_detector(runs: int = 8, steps: int = 12, seed: int = 0) -> Detector:
    """A detector fitted on synthetic normal runs (independent of the shipped artifact)."""
    return synthetic_detector(runs, steps, seed)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return fit_small_detector()


steps_strategy = st.lists(
    st.tuples(st.integers(0, 60), st.lists(nasty_floats, min_size=len(STEP_METRICS), max_size=len(STEP_METRICS)),
              st.lists(st.tuples(nasty_floats, st.one_of(st.none(), huge_ints.map(abs)), unicode_text), max_size=4)),
    min_size=1, max_size=20,
)


def monitor_inputs(rows) -> list[tuple[StepRecord, list[TrajectoryRecord]]]:
    out = []
    for step, values, trajs in rows:
        record = StepRecord(run_id="r", step=step, **dict(zip(STEP_METRICS, values)))
        out.append((record, [TrajectoryRecord(run_id="r", rollout_step=step, prompt_id=text, group_id=0, reward=reward,
                                              response_length=length, advantage=reward, completion=text)
                             for reward, length, text in trajs]))
    return out


@settings(SETTINGS, max_examples=40)
@given(steps_strategy)
def test_detector_observe_never_raises_and_counts_repeated_steps(detector: Detector, rows) -> None:
    detector.reset("r", "arith_a", "xs")
    skipped_before, resumes_before = detector.skipped_steps, detector.resumes
    last, repeated = 0, 0
    for record, trajs in monitor_inputs(rows):
        skipped = detector.skipped_steps
        alarm = detector.observe(record, trajs)
        if record.step <= last:
            repeated += 1  # a step that goes back is a rollback or a resume: re-scored from the state before it
        if detector.skipped_steps == skipped:
            last = record.step
        if alarm is not None:
            assert math.isfinite(alarm.score) and alarm.score > alarm.threshold
    assert (detector.skipped_steps - skipped_before) + (detector.resumes - resumes_before) == repeated


@settings(SETTINGS, max_examples=25)
@given(steps_strategy)
def test_closed_loop_per_step_path_records_no_internal_error_on_bad_input(detector: Detector, rows) -> None:
    """Bad values are data, not faults of the monitor: the loop takes them without a single internal error."""
    controller = Controller(detector, None, run_id="r", task_group="arith_a", model_size="xs",
                            config=ControllerConfig(remediate=False))
    for record, trajs in monitor_inputs(rows):
        controller.observe(record, trajs)
    assert controller.counts["errors"] == 0, controller.store.events(kind="error")


def test_empty_trajectory_lists_and_all_missing_metrics(detector: Detector) -> None:
    detector.reset("empty", "arith_a", "xs")
    skipped = detector.skipped_steps
    for step in range(1, 30):
        assert detector.observe(StepRecord(run_id="empty", step=step), []) is None
    assert detector.last_score is not None and detector.skipped_steps == skipped  # scored, never skipped
