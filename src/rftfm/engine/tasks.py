"""Task groups of the embedded engine: prompts, strict verifiers and the calculator tool.

* ``arith_a`` -- two-digit addition, answered directly (``37+45=`` -> ``82``).
* ``arith_b`` -- two-digit by one-digit multiplication, harder for a tiny model.
* ``tool`` -- two-digit multiplication with a calculator: the policy may answer
  directly or emit a tool call ``[37*24]``; the environment executes the call and the
  tool's result is the policy's answer. Tool calls and tool errors are real events.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Protocol

TOOL_CALL = re.compile(r"^\[(\d{1,4})([+\-*])(\d{1,4})\]$")
_OPS: dict[str, Callable[[int, int], int]] = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: int
    prompt_id: str


@dataclass
class ToolResult:
    value: int | None
    error: str | None = None


class Tool(Protocol):
    def __call__(self, a: int, op: str, b: int) -> ToolResult: ...


def calculator(a: int, op: str, b: int) -> ToolResult:
    """The clean calculator tool (parses nothing itself; no ``eval``)."""
    return ToolResult(_OPS[op](a, b))


def with_retries(tool: Tool, retries: int) -> Tool:
    """``tool`` retried up to ``retries`` more times when it raises (a sandbox time-out, a crash).

    This is the retry setting every tool sandbox has; a call whose every attempt fails is still
    a failed call.
    """
    if retries <= 0:
        return tool

    def retried(a: int, op: str, b: int) -> ToolResult:
        for attempt in range(retries + 1):
            try:
                return tool(a, op, b)
            except Exception:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    return retried


@dataclass
class Outcome:
    """What the verifier saw in one completion."""

    correct: bool
    tool_calls: int = 0
    tool_errors: int = 0
    tool_value: int | None = None


@dataclass(frozen=True)
class TaskGroup:
    name: str
    op: str
    a_range: tuple[int, int]
    b_range: tuple[int, int]
    prefix: str = ""
    uses_tool: bool = False
    tool_call_share_in_sft: float = 0.0

    def sample(self, rng: random.Random) -> Problem:
        a, b = rng.randint(*self.a_range), rng.randint(*self.b_range)
        expr = f"{a}{self.op}{b}"
        return Problem(f"{self.prefix}{expr}=", _OPS[self.op](a, b), f"{self.name}:{expr}")

    def problems(self, n: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(n)]

    def eval_problems(self, n: int = 128) -> list[Problem]:
        """The fixed held-out prompt set (same for every run of this task group)."""
        return self.problems(n, seed=10_000 + sum(map(ord, self.name)))

    def sft_completion(self, problem: Problem, rng: random.Random) -> str:
        if self.uses_tool and rng.random() < self.tool_call_share_in_sft:
            return "[" + problem.prompt.removeprefix(self.prefix).removesuffix("=") + "]"
        return str(problem.answer)

    def verify(self, completion: str, problem: Problem, tool: Tool = calculator) -> Outcome:
        """Strict verifier: the completion is exactly the answer, or (tool task) one valid tool call."""
        text = completion.strip()
        if self.uses_tool and text.startswith("["):
            match = TOOL_CALL.match(text)
            if match is None:
                return Outcome(False, tool_calls=1, tool_errors=1)
            a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
            try:
                result = tool(a, op, b)
            except Exception:  # a crashing sandbox is a tool error, scored 0
                return Outcome(False, tool_calls=1, tool_errors=1)
            if result.error is not None or result.value is None:
                return Outcome(False, tool_calls=1, tool_errors=1)
            return Outcome(result.value == problem.answer, tool_calls=1, tool_value=result.value)
        return Outcome(text.isdigit() and int(text) == problem.answer)


TASK_GROUPS: dict[str, TaskGroup] = {
    t.name: t
    for t in (
        TaskGroup("arith_a", "+", (10, 59), (10, 59)),
        TaskGroup("arith_b", "*", (10, 39), (2, 9)),
        TaskGroup("tool", "*", (10, 99), (10, 99), prefix="@", uses_tool=True, tool_call_share_in_sft=0.35),
    )
}


def task_group(name: str) -> TaskGroup:
    try:
        return TASK_GROUPS[name]
    except KeyError:
        raise KeyError(f"unknown task group {name!r}; known: {sorted(TASK_GROUPS)}") from None
