"""Fuzz every reader of outside data and the monitor; count inputs tried, crashes and records lost.

Mutation fuzzing (seeded, reproducible): good log lines of each format (the published
OpenRLHF / RFT-FaultBench layout read by the loader and by the adapter, TRL, verl, plain
JSONL) are mixed with mutated copies (truncation, byte flips, control and non-UTF-8 bytes,
lone surrogates, NaN / +-inf / 1e999 / 400- and 5000-digit numbers, wrong types, deleted and
extra keys, deep nesting, duplicated and swapped lines, a 200 kB line). Then:

* the loader (``load_benchmark`` on the JSONL layout) and the adapters (``read_log``) must not
  raise, and every good line must come out with its value: *lost* counts good records that
  vanished without being counted as skipped (a mutated line whose step number became larger
  can make later good steps out of order; those are counted skips and reported separately);
* the record models must accept a line or raise pydantic's ``ValidationError``;
* the monitor (``Detector.observe`` and the closed loop's per-step path, alert-only) is fed
  every record the adapters produced plus records with non-finite and huge values, steps out of
  order and repeated, and empty or odd trajectory lists; it must not raise, and the loop must
  record no internal error.

Usage: ``python scripts/fuzz_inputs.py [--files 3000] [--seed 0] [--json out.json]``.
Hypothesis property tests with small example counts run in CI (tests/test_reliability_input.py);
this is the larger sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from rftfm.fm.detect import Detector
from rftfm.fm.loop import Controller, ControllerConfig
from rftfm.io.adapters import StepParser, read_log
from rftfm.io.faultbench import STEP_FILE, TRAJ_FILE, step_to_published, trajectory_to_published
from rftfm.io.loader import load_benchmark
from rftfm.records import STEP_METRICS, StepRecord, TrajectoryRecord
from rftfm.testing import synthetic_detector as _synthetic_detector

TARGETS = ("loader", "openrlhf", "trl", "verl", "jsonl")
NASTY_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" * 400,
    "9" * 5000,
    '"text"',
    "[1, 2]",
    "{}",
    "null",
    "true",
    '"\\ud800"',
    '"<script>alert(1)</script>"',
    "1e-400",
    "-0.0",
    '"é😀"',
)


# --- good lines ------------------------------------------------------------------------------


def good_line(target: str, step: int, reward: float, rng: random.Random) -> str:
    kl = round(rng.uniform(0, 0.1), 6)
    if target in ("loader", "openrlhf"):
        return json.dumps(
            step_to_published(StepRecord(run_id="fz", step=step, reward_mean=reward, kl=kl, entropy=rng.random()))
        )
    if target == "trl":
        return json.dumps({"loss": rng.random(), "reward": reward, "kl": kl, "step": step, "epoch": step / 10})
    if target == "verl":
        return json.dumps(
            {"step": step, "data": {"critic/score/mean": reward, "actor/kl_loss": kl, "timing_s/step": 1.0}}
        )
    return json.dumps({"step": step, "reward_mean": reward, "kl": kl})


# --- mutations --------------------------------------------------------------------------------


def _replace_number(line: str, rng: random.Random) -> str:
    import re

    spans = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", line)]
    if not spans:
        return line + rng.choice(NASTY_TOKENS)
    a, b = rng.choice(spans)
    return line[:a] + rng.choice(NASTY_TOKENS) + line[b:]


def _edit_json(line: str, rng: random.Random) -> str:
    try:
        obj = json.loads(line)
    except ValueError:
        return line
    target = obj.get("metrics") or obj.get("data") or obj
    keys = list(target)
    choice = rng.randrange(4)
    if choice == 0 and keys:
        del target[rng.choice(keys)]
    elif choice == 1:
        target[rng.choice(["extra_" + str(rng.randrange(99)), "é😀", "<b>", ""])] = rng.choice(
            [1.5, "x", [1, {"a": None}], None, True]
        )
    elif choice == 2 and keys:
        target[rng.choice(keys)] = rng.choice(["abc", [], {}, None, True, 10**30, -1])
    else:
        obj["step"] = rng.choice([-1, "7", 2.5, None, 10**20, [3]])
    return json.dumps(obj)


MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "truncate": lambda s, r: s[: r.randrange(max(1, len(s)))],
    "flip_char": lambda s, r: (lambda i: s[:i] + chr(r.randrange(1, 0x2FFF)) + s[i + 1 :])(r.randrange(max(1, len(s)))),
    "control_chars": lambda s, r: (
        lambda i: s[:i] + r.choice(["\x00", "\x1b[31m", "\t", "\x7f", "\u2028", "\ufeff"]) + s[i:]
    )(r.randrange(max(1, len(s)))),
    "nasty_number": _replace_number,
    "edit_json": _edit_json,
    "deep_nesting": lambda s, r: "[" * r.choice([50, 5000, 100000]) + "]" * r.choice([0, 50]),
    "not_an_object": lambda s, r: r.choice(["[1, 2, 3]", "42", '"a string"', "null", "true"]),
    "garbage_text": lambda s, r: r.choice(
        [
            "Traceback (most recent call last):",
            "loading checkpoint shards 100%|#####|",
            "step; reward=oops",
            "WARNING: NaN in loss",
            "=" * 80,
        ]
    ),
    "huge_line": lambda s, r: s[:-1] + ', "blob": "' + "x" * 200_000 + '"}' if s.endswith("}") else s + "x" * 200_000,
    "empty": lambda s, r: r.choice(["", "   ", "\t"]),
}
#: Mutations whose result is certainly not a training step of the target format.
NEVER_A_STEP = {"deep_nesting", "not_an_object", "garbage_text", "empty"}


def mutate(line: str, rng: random.Random) -> tuple[str, str]:
    name = rng.choice(list(MUTATIONS))
    return name, MUTATIONS[name](line, rng)


# --- one fuzz case per target -----------------------------------------------------------------


def build_case(target: str, rng: random.Random) -> tuple[list[str], list[tuple[int, float]], Counter, list[str]]:
    """Lines (good and mutated), the good (step, reward) pairs, mutation counts, and the good lines' text."""
    n_good = rng.randint(0, 25)
    steps = sorted(rng.sample(range(1, 200), n_good))
    good = [(s, round(rng.uniform(-1, 1), 6)) for s in steps]
    lines = [good_line(target, s, r, rng) for s, r in good]
    used: Counter = Counter()
    template = lines[0] if lines else good_line(target, 1, 0.5, rng)
    bad = []
    for _ in range(rng.randint(1, 15)):
        name, text = mutate(rng.choice(lines) if lines else template, rng)
        used[name] += 1
        bad.append(text)
    out = list(lines)
    for text in bad:  # never before the first good line: the first line decides an auto-detected format
        out.insert(rng.randint(1 if out else 0, len(out)), text)
    return out, good, used, lines


def write_lines(path: Path, lines: list[str], rng: random.Random) -> None:
    """Write the lines; sometimes add a line of invalid UTF-8 and a last line cut mid-write (no newline)."""
    encoded = [line.encode("utf-8", "surrogatepass") for line in lines]
    if rng.random() < 0.2:
        encoded.insert(rng.randint(1 if encoded else 0, len(encoded)), bytes([0xFF, 0xFE, 0xC3]) + b'{"step": \xc3(')
    data = b"\n".join(encoded) + b"\n"
    if encoded and rng.random() < 0.2:
        data += encoded[-1][: rng.randrange(max(1, len(encoded[-1])))]
    path.write_bytes(data)


def _unmatched(good: list[tuple[int, float]], got: list[tuple[int, float | None]]) -> list[tuple[int, float]]:
    """Good (step, reward) pairs that do not come out (a multiset difference)."""
    remaining = Counter((s, round(r, 6)) for s, r in got if r is not None and math.isfinite(r))
    missing = []
    for s, r in good:
        if remaining[(s, r)] > 0:
            remaining[(s, r)] -= 1
        else:
            missing.append((s, r))
    return missing


def fuzz_loader(workdir: Path, lines: list[str], good: list[tuple[int, float]], rng: random.Random) -> dict[str, int]:
    sub = workdir / "bench" / "normal" / "fz" / "train"
    sub.mkdir(parents=True)
    write_lines(sub / STEP_FILE, lines, rng)
    traj = TrajectoryRecord(run_id="fz", rollout_step=1, prompt_id="p", group_id=0, reward=1.0, completion="ok")
    traj_lines = [json.dumps(trajectory_to_published(traj))]
    traj_lines += [mutate(traj_lines[0], rng)[1] for _ in range(rng.randint(0, 4))]
    write_lines(sub / TRAJ_FILE, traj_lines, random.Random(0))
    bench = load_benchmark(workdir / "bench")
    steps = bench.steps
    got = list(zip(steps["step"].to_list(), steps["reward_mean"].to_list())) if "reward_mean" in steps.columns else []
    matched = len(good) - len(_unmatched(good, got))
    return {
        "good": len(good),
        "matched": matched,
        "lost": len(good) - matched,
        "skipped_counted": 0,
        "malformed_counted": bench.report.malformed_lines,
        "bad_values_counted": bench.report.bad_values,
    }


def _skipped_good_lines(path: Path, target: str, good_by_text: dict[str, tuple[int, float]]) -> set[tuple[int, float]]:
    """Good lines the adapter's documented rule skips as out of order: a mutated line before them was
    accepted with a step >= theirs (the same line-by-line parse, in file order)."""
    parser = StepParser(target, run_id="fz")
    last, skipped = -1, set()
    for raw in path.read_bytes().split(b"\n"):
        line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        record = parser.parse_line(line)
        if record is None:
            continue
        if record.step <= last:
            if line in good_by_text:
                skipped.add(good_by_text[line])
            continue
        last = record.step
    return skipped


def fuzz_adapter(
    workdir: Path,
    target: str,
    lines: list[str],
    good: list[tuple[int, float]],
    rng: random.Random,
    records_out: list,
    good_texts: list[str],
) -> dict[str, int]:
    path = workdir / "log.jsonl"
    write_lines(path, lines, rng)
    events, stats = read_log(path, fmt=target, run_id="fz")
    records_out.extend(events)
    missing = _unmatched(good, [(e[0].step, e[0].reward_mean) for e in events])
    skipped = _skipped_good_lines(
        path, target, {good_line_text: pair for good_line_text, pair in zip(good_texts, good)}
    )
    explained = [g for g in missing if g in skipped] if stats.out_of_order >= len(skipped) else []
    matched = len(good) - len(missing)
    return {
        "good": len(good),
        "matched": matched,
        "lost": len(missing) - len(explained),
        "skipped_counted": len(explained),
        "malformed_counted": stats.malformed_lines,
        "bad_values_counted": 0,
    }


def fuzz_models(lines: list[str]) -> int:
    for line in lines:
        for model in (StepRecord, TrajectoryRecord):
            try:
                model.model_validate_json(line)
            except ValidationError:
                pass
    return 2 * len(lines)


# --- the monitor ------------------------------------------------------------------------------


def synthetic_detector(runs: int = 8, steps: int = 30, seed: int = 0) -> Detector:
    """A detector fitted on synthetic normal runs, so the fuzz does not depend on a shipped artifact."""
    return _synthetic_detector(runs, steps, seed)


NASTY_VALUES = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, None)


def nasty_steps(rng: random.Random, n: int) -> list[tuple[StepRecord, list[TrajectoryRecord]]]:
    out = []
    for _ in range(n):
        step = rng.choice([0, 1, 2, 3, 5, 8, 13, 10**9, rng.randrange(1, 60)])
        values = {m: (rng.choice(NASTY_VALUES) if rng.random() < 0.5 else rng.gauss(0, 10)) for m in STEP_METRICS}
        record = StepRecord(run_id="fz", step=step, extra={"é😀<b>": rng.choice(NASTY_VALUES)}, **values)
        trajs = [
            TrajectoryRecord(
                run_id="fz",
                rollout_step=step,
                prompt_id=rng.choice(["", "p", "\ud800", "<script>"]),
                group_id=rng.randrange(4),
                reward=rng.choice(NASTY_VALUES),
                advantage=rng.choice(NASTY_VALUES),
                response_length=rng.choice([None, 0, 10**400, 2**63]),
                tool_call_count=rng.choice([0, 10**30]),
                completion=rng.choice([None, "", "x" * 10_000, "\x00\ud800"]),
            )
            for _ in range(rng.choice([0, 0, 1, 4, 64]))
        ]
        out.append((record, trajs))
    return out


def fuzz_monitor(detector: Detector, events: list) -> dict[str, int]:
    """Feed every event to Detector.observe and to the loop; returns steps fed and loop internal errors."""
    controller = Controller(
        detector, None, run_id="fz", task_group="arith_a", model_size="xs", config=ControllerConfig(remediate=False)
    )
    detector.reset("fz", "arith_a", "xs")
    for record, trajs in events:
        record = record.model_copy(update={"run_id": "fz"})
        detector.observe(record, trajs)
        controller.observe(record, trajs)
    return {"monitor_steps": 2 * len(events), "loop_internal_errors": controller.counts["errors"]}


# --- driver -----------------------------------------------------------------------------------


def run_fuzz(files: int = 3000, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run the sweep; returns the totals (and the first few crash reports)."""
    rng = random.Random(seed)
    detector = synthetic_detector()
    totals: Counter = Counter()
    by_target: dict[str, Counter] = {t: Counter() for t in TARGETS}
    mutations: Counter = Counter()
    crashes: list[dict[str, str]] = []
    start = time.perf_counter()
    tmp_root = Path(tempfile.mkdtemp(prefix="rftfm-fuzz-"))
    try:
        for i in range(files):
            target = TARGETS[i % len(TARGETS)]
            lines, good, used, good_texts = build_case(target, rng)
            mutations.update(used)
            workdir = tmp_root / str(i)
            workdir.mkdir()
            stage = target
            try:
                events: list = []
                if target == "loader":
                    result = fuzz_loader(workdir, lines, good, rng)
                else:
                    result = fuzz_adapter(workdir, target, lines, good, rng, events, good_texts)
                stage = "records"
                totals["model_inputs"] += fuzz_models(lines)
                stage = "monitor"
                monitor = fuzz_monitor(detector, events + nasty_steps(rng, rng.randint(1, 12)))
                result.update(monitor)
            except Exception as exc:  # a crash: exactly what this script exists to count
                totals["crashes"] += 1
                by_target[target]["crashes"] += 1
                if len(crashes) < 10:
                    crashes.append(
                        {
                            "case": str(i),
                            "stage": stage,
                            "error": f"{type(exc).__name__}: {exc}"[:300],
                            "traceback": traceback.format_exc(limit=4)[-1500:],
                        }
                    )
                result = {}
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            totals["files"] += 1
            totals["lines"] += len(lines)
            totals["mutated_lines"] += sum(used.values())
            for key, value in result.items():
                totals[key] += value
                by_target[target][key] += value
            if progress is not None:
                progress(i + 1)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    inputs = totals["lines"] + totals["model_inputs"] + totals["monitor_steps"]
    return {
        "seed": seed,
        "files": files,
        "seconds": round(time.perf_counter() - start, 1),
        "inputs_tried": inputs,
        "log_lines": totals["lines"],
        "mutated_lines": totals["mutated_lines"],
        "model_validations": totals["model_inputs"],
        "monitor_steps": totals["monitor_steps"],
        "crashes": totals["crashes"],
        "loop_internal_errors": totals["loop_internal_errors"],
        "good_records": totals["good"],
        "good_records_recovered": totals["matched"],
        "records_lost": totals["lost"],
        "good_records_skipped_counted": totals["skipped_counted"],
        "malformed_lines_counted": totals["malformed_counted"],
        "bad_values_counted": totals["bad_values_counted"],
        "by_target": {t: dict(c) for t, c in by_target.items()},
        "mutations": dict(mutations),
        "crash_reports": crashes,
    }


def main() -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # overflow in numpy on 1e308 inputs: expected here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000, help="fuzz cases (log files), spread over the targets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the totals as JSON")
    args = parser.parse_args()
    result = run_fuzz(
        args.files,
        args.seed,
        progress=lambda i: print(f"\r{i}/{args.files} cases", end="", flush=True) if i % 100 == 0 else None,
    )
    print()
    summary = {k: v for k, v in result.items() if k not in ("by_target", "mutations", "crash_reports")}
    print(json.dumps(summary, indent=1))
    for crash in result["crash_reports"]:
        print(f"CRASH case {crash['case']} ({crash['stage']}): {crash['error']}\n{crash['traceback']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    raise SystemExit(1 if result["crashes"] or result["records_lost"] or result["loop_internal_errors"] else 0)


if __name__ == "__main__":
    main()
