"""Metrics in console output as printed by the frameworks: verl ``step:N - key:value`` lines, TRL's
printed log dicts between progress bars, OpenRLHF's progress-bar postfix.

Console logs arrive as users keep them: with ANSI colour codes, Ray's ``(TaskRunner pid=...)``
prefixes, tqdm's carriage-return redraws, and values such as ``np.float64(0.5)``, ``nan`` or
``tensor(0.1)``. No maintained library parses these, so it is done here; Python literals go
through :mod:`ast` (never ``eval``).
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

#: ANSI escape sequences (colours, cursor moves), as terminals and Ray's log forwarding leave them.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
#: Ray's per-actor prefix: ``(TaskRunner pid=14640)`` or ``(WorkerDict pid=1, ip=10.0.0.1)``.
RAY_PREFIX = re.compile(r"^\s*\([\w.-]+ pid=\d+(?:, ip=[\w.:-]+)?\)\s?")
_VERL_STEP = re.compile(r"^\s*step[: ]\s*(\d{1,18}):?\s*-\s*(.*)$")
_NUMBER_CALL = re.compile(r"^(?:np|numpy|torch)?\.?(?:float\d*|int\d*|tensor)\((.*?)(?:,\s*\w+=.*)?\)$")
_NUMPY_WRAPPER = re.compile(r"\bnp\.(?:float|int)\d*\(")
#: A tqdm bar's counter: ``  3/25 [01:02<...``.
_BAR = re.compile(r"(\d+)/(\d+) \[")
#: A tqdm postfix: ``[01:02<07:30, 20.3s/it, policy_loss=0.01, kl=0.002]``.
_POSTFIX = re.compile(r"\[[^\[\]]*?,\s*([A-Za-z_][\w/.]*=[^\[\]]*)\]\s*$")


def clean(line: str) -> list[str]:
    """A raw console line -> its visible segments (colour codes gone, tqdm redraws split, Ray prefixes off)."""
    text = ANSI.sub("", line) if "\x1b" in line else line
    segments = text.split("\r") if "\r" in text else [text]
    return [RAY_PREFIX.sub("", s, count=1) if "pid=" in s else s for s in segments]


def number(text: str) -> float | None:
    """``0.5``, ``nan``, ``np.float64(0.5)``, ``tensor(0.1, device='cuda:0')`` -> float (None if not a number)."""
    try:
        return float(text)
    except ValueError:
        pass
    call = _NUMBER_CALL.match(text.strip())
    if not call:
        return None
    try:
        return float(call.group(1).strip())
    except ValueError:
        return None


def parse_verl_step(line: str) -> dict[str, Any] | None:
    """``step:12 - actor/entropy:0.51 - critic/score/mean:0.3`` -> dict with ``step`` (None if not such a line)."""
    match = _VERL_STEP.match(line)
    if not match:
        return None
    out: dict[str, Any] = {"step": int(match.group(1))}
    rest = match.group(2)
    wrapped = "(" in rest
    if wrapped:  # np.float64(0.5) -> 0.5): the wrapper's name goes in one pass over the line, its ")" below
        rest = _NUMPY_WRAPPER.sub("", rest)
    for part in rest.split(" - "):
        key, sep, value = part.rpartition(":")
        if not sep:
            continue
        try:
            parsed = float(value.rstrip(") ") if wrapped else value)
        except ValueError:
            parsed = number(value)
            if parsed is None:
                continue
        key = key.strip()
        if key:
            out[key] = parsed
    return out


# --- Python dict literals (TRL prints ``{'loss': 0.1, 'reward': nan}``) ------------------------

_NAMED = {
    "nan": math.nan,
    "inf": math.inf,
    "NaN": math.nan,
    "Infinity": math.inf,
    "None": None,
    "True": True,
    "False": False,
}


def _value(node: ast.AST) -> Any:
    """A literal value; ``nan`` / ``inf`` and numeric wrappers (``np.float64(x)``, ``tensor(x)``) allowed."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMED:
        return _NAMED[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Call) and node.args:
        name = ast.unparse(node.func)
        if name.rsplit(".", 1)[-1].startswith(("float", "int", "tensor", "array")):
            return _value(node.args[0])
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(e) for e in node.elts]
    raise ValueError(f"not a literal: {ast.dump(node)[:60]}")


def parse_python_dict(text: str) -> dict[str, Any] | None:
    """The first ``{'key': value, ...}`` in ``text`` as a dict of str keys, or None."""
    start = text.find("{'")
    end = text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        tree = ast.parse(text[start : end + 1], mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.Dict):
        return None
    out: dict[str, Any] = {}
    for key, value in zip(tree.body.keys, tree.body.values):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            return None
        try:
            out[key.value] = _value(value)
        except (ValueError, RecursionError):
            out[key.value] = None  # a value we cannot read (an object repr): kept as not-a-number
    return out


# --- tqdm progress bars --------------------------------------------------------------------------


class ProgressTracker:
    """Remembers the training bar's counter, so a printed log dict gets its step number.

    The training bar is the one with the largest total seen so far (evaluation and loading bars
    are shorter); its counter at the moment a dict is printed is the step the dict belongs to.
    """

    def __init__(self) -> None:
        self.total = 0
        self.step: int | None = None

    def see(self, segment: str) -> None:
        for done, total in _BAR.findall(segment):
            if int(total) >= self.total:
                self.total, self.step = int(total), int(done)


def parse_postfix(segment: str) -> dict[str, Any] | None:
    """A tqdm postfix ``k=v, k=v`` at the end of a bar -> dict of numbers (None if there is none)."""
    match = _POSTFIX.search(segment)
    if not match:
        return None
    out: dict[str, Any] = {}
    for part in match.group(1).split(","):
        key, sep, value = part.partition("=")
        parsed = number(value) if sep else None
        if parsed is not None:
            out[key.strip()] = parsed
    return out or None
