"""Security: no unsafe deserialisation in src/, no path traversal out of a benchmark root, escaped reports.

The source scan parses every module of ``src/`` with :mod:`ast` (not grep: comments and
docstrings that mention ``pickle`` are fine, calls are not).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftfm.cli import app
from rftfm.io.faultbench import RUN_INFO_FILE, STEP_FILE, SUB_DIR, RunWriter, is_finished, step_to_published
from rftfm.io.loader import load_benchmark
from rftfm.records import RunInfo, StepRecord, TrajectoryRecord
from rftfm.report.html import build_report, write_report

SRC = Path(__file__).resolve().parents[1] / "src" / "rftfm"
EVIL = "<script>alert('x')</script>"

#: Modules whose import alone means unsafe deserialisation of data.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
#: Attribute calls that deserialise with code execution, whatever their arguments.
FORBIDDEN_CALLS = {("yaml", "unsafe_load"), ("yaml", "full_load"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, "the scan must see the package"
    return files


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_uses(tree: ast.AST) -> list[str]:
    """Every unsafe construct in one parsed module, as 'line: what'."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            line = node.lineno
            if name in (("eval",), ("exec",), ("__import__",)):
                found.append(f"{line}: {name[0]}()")
            elif name[-2:] in FORBIDDEN_CALLS:
                found.append(f"{line}: {'.'.join(name)}()")
            elif name[-2:] == ("yaml", "load"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                if loader is None or "Safe" not in ".".join(_dotted(loader)):
                    found.append(f"{line}: yaml.load without SafeLoader")
            elif name[-1:] == ("load",) and name[:1] == ("torch",):
                flag = _kw(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{line}: torch.load without weights_only=True")
            elif name[-1:] == ("load",) and name[:1] in (("np",), ("numpy",)):
                flag = _kw(node, "allow_pickle")
                if isinstance(flag, ast.Constant) and flag.value is True:
                    found.append(f"{line}: numpy.load(allow_pickle=True)")
            flag = _kw(node, "trust_remote_code")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"{line}: trust_remote_code=True")
    return found


def test_the_scanner_catches_every_unsafe_construct() -> None:
    bad = """
import pickle
from joblib import load
import yaml, torch, numpy as np
eval("1")
exec("x = 1")
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
AutoModel.from_pretrained(name, trust_remote_code=True)
"""
    assert len(unsafe_uses(ast.parse(bad))) == 11  # one per line below the imports of yaml/torch/numpy
    good = """
import yaml, torch, numpy as np
model.eval()
yaml.load(text, Loader=yaml.SafeLoader)
yaml.safe_load(text)
torch.load(path, weights_only=True)
np.load(path)
"""
    assert unsafe_uses(ast.parse(good)) == []


def test_no_pickle_eval_exec_unsafe_yaml_or_unsafe_torch_load_in_src() -> None:
    problems = {}
    for path in _sources():
        found = unsafe_uses(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if found:
            problems[str(path.relative_to(SRC))] = found
    assert problems == {}


def test_no_pickled_artifacts_ship_in_the_package() -> None:
    shipped = [p for p in SRC.rglob("*") if p.suffix in {".pkl", ".pickle", ".joblib", ".pt", ".pth", ".bin", ".npy"}]
    assert shipped == []


# --- path traversal ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("run_id", "../escaped"), ("run_id", ".."), ("group", "../../escaped"),
                                         ("run_id", "a/b"), ("run_id", "a\\b"), ("group", "")])
def test_run_writer_refuses_ids_that_leave_the_benchmark_root(tmp_path: Path, field: str, value: str) -> None:
    root = tmp_path / "bench"
    info = RunInfo(**{"run_id": "ok", "group": "normal", "task_group": "arith_a", field: value})
    with pytest.raises(ValueError, match="not a plain directory name"):
        RunWriter(root, info)
    with pytest.raises(ValueError, match="not a plain directory name"):
        is_finished(root, info)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) in ([], ["bench"])


def test_generate_refuses_a_traversing_run_before_training_anything(tmp_path: Path) -> None:
    from rftfm.bench.generate import generate

    bad = RunInfo(run_id="../../outside", group="normal", task_group="arith_a", model_size="xs", num_steps=2)
    with pytest.raises(ValueError, match="not a plain directory name"):
        generate(tmp_path / "bench", [bad], workers=1)
    assert not (tmp_path / "outside").exists()


def _write_run(root: Path, group: str, run_id: str, steps: int = 3) -> Path:
    sub = root / group / run_id / SUB_DIR
    sub.mkdir(parents=True)
    lines = [
        json.dumps(step_to_published(StepRecord(run_id=run_id, step=s, reward_mean=0.1 * s)))
        for s in range(1, steps + 1)
    ]
    (sub / STEP_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sub.parent


def test_directory_loader_does_not_follow_a_symlink_out_of_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "bench", tmp_path / "outside"
    _write_run(root, "normal", "inside")
    _write_run(outside, "normal", "secret")
    os.symlink(outside / "normal" / "secret", root / "normal" / "secret")
    (root / "metadata" / "registries").mkdir(parents=True)
    (root / "metadata" / "registries" / "normal.csv").write_text(
        "experiment_id,control_or_fault,fault_family,fault_type,task_group\n../outside/normal/secret,normal,,,arith_a\n"
        "inside,normal,,,arith_a\n", encoding="utf-8")
    bench = load_benchmark(root)
    assert bench.steps["run_id"].unique().to_list() == ["inside"]
    assert bench.runs["run_id"].to_list() == ["inside"]  # a registry entry never names a path to read
    assert bench.report.skipped_paths == 1 and "outside" in bench.report.problems[0]


def test_report_default_file_name_cannot_leave_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path / "logs", "normal", "run1")
    (run_dir / RUN_INFO_FILE).write_text(json.dumps({"run_id": "../../escaped"}), encoding="utf-8")
    work = tmp_path / "work" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["report", str(run_dir), "--no-detect"])
    assert result.exit_code == 0, result.output
    written = list(work.glob("*.html"))
    assert len(written) == 1 and not list((tmp_path / "work").glob("*.html")) and not list(tmp_path.glob("*.html"))


# --- the HTML report escapes log strings ------------------------------------------------------


def test_html_report_escapes_a_script_tag_in_a_metric_name_and_a_completion(tmp_path: Path) -> None:
    events = []
    for step in range(1, 4):
        record = StepRecord(run_id="r", step=step, reward_mean=0.1 * step, extra={EVIL: float(step)})
        trajs = [TrajectoryRecord(run_id="r", rollout_step=step, prompt_id=EVIL, group_id=0, reward=1.0,
                                  response_length=5, completion=EVIL + "</pre></td></table>\ud800")]
        events.append((record, trajs))
    page = build_report(
        EVIL, events, [{"kind": "error", "run_id": "r", "step": 2, "time": 0.0, "payload": {"error": EVIL}}]
    )
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # shown as text
    assert "</pre></td></table>" not in page
    path = write_report(tmp_path / "r.html", "r", events)  # a lone surrogate does not stop the write
    assert "<script>alert" not in path.read_text(encoding="utf-8")
