"""Task groups of the embedded engine: prompts, verifiers, reward shapes and the calculator tool.

| task group | prompt      | answer          | reward (TRL reward functions, verifier first)                           |
|------------|-------------|-----------------|-------------------------------------------------------------------------|
| arith_a    | 37+45=      | 82              | exact match, binary                                                     |
| arith_b    | 23*7=       | 161             | exact match, binary (harder for a tiny model)                           |
| tool       | @37*24=     | [37*24] or 888  | exact match; the policy may call the calculator, its result is the answer |
| digits     | 123+456=    | 579             | partial credit: share of digit positions right                          |
| fmt_sub    | 83-27=      | #56#            | two functions: the number's correctness (weight 1) + format #n# (0.5)   |
| overlong   | 23*7=       | 161             | two functions: leading number correct + DAPO's soft overlong penalty    |
| repeat     | 7?4=        | 7777            | length-shaped: 1 - abs(length - 4) / 4 when only the digit 7 is written |
| tool_sub   | @812-347=   | [812-347] or 465| exact match with the calculator (three-digit subtraction)               |

Every task's *eval accuracy* is strict: the completion is exactly the answer (or one tool
call that yields it). Tool calls and tool errors are real events of the environment.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

TOOL_CALL = re.compile(r"^\[(\d{1,4})([+\-*])(\d{1,4})\]$")
_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "?": lambda a, b: int(str(a) * b),  # write the digit a, b times
}
LEADING_NUMBER = re.compile(r"\d+")
FORMATTED = re.compile(r"^#(\d+)#$")


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
    """What the verifier saw in one completion: strict correctness and the verifier's reward."""

    correct: bool
    tool_calls: int = 0
    tool_errors: int = 0
    tool_value: int | None = None
    score: float | None = None  # the verifier's reward when it is not ``correct`` (partial credit)

    @property
    def reward(self) -> float:
        return float(self.correct) if self.score is None else self.score


Credit = Literal["exact", "digits", "length"]


@dataclass(frozen=True)
class TaskGroup:
    name: str
    op: str
    a_range: tuple[int, int]
    b_range: tuple[int, int]
    prefix: str = ""
    uses_tool: bool = False
    tool_call_share_in_sft: float = 0.0
    #: how the verifier scores a direct answer: exact match, share of digit positions, or length match
    credit: Credit = "exact"
    answer_format: str = "{}"  # how the answer is written, e.g. "#{}#"
    lenient: bool = False  # the verifier reads the leading number and ignores what follows
    #: extra TRL reward functions after the verifier (names of :data:`SHAPING_REWARDS`)
    shaping: tuple[str, ...] = ()
    #: TRL ``reward_weights`` (verifier first); None: every function weighs 1
    reward_weights: tuple[float, ...] | None = None

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

    def target(self, problem: Problem) -> str:
        """The answer as the task wants it written."""
        return self.answer_format.format(problem.answer)

    def tool_call(self, problem: Problem) -> str:
        return "[" + problem.prompt.removeprefix(self.prefix).removesuffix("=") + "]"

    def sft_completion(self, problem: Problem, rng: random.Random) -> str:
        if self.uses_tool and rng.random() < self.tool_call_share_in_sft:
            return self.tool_call(problem)
        return self.target(problem)

    @property
    def min_completion_length(self) -> int:
        """Tokens (characters + EOS) the longest answer of this task needs."""
        corners = [Problem(f"{self.prefix}{a}{self.op}{b}=", _OPS[self.op](a, b), "")
                   for a in self.a_range for b in self.b_range]
        texts = [self.target(p) for p in corners] + ([self.tool_call(p) for p in corners] if self.uses_tool else [])
        return max(map(len, texts)) + 1

    def verify(self, completion: str, problem: Problem, tool: Tool = calculator) -> Outcome:
        """Strict correctness (the completion is exactly the answer, or one tool call that yields it) and
        the verifier's reward (partial credit, lenient reading or format-blind reading where the task says)."""
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
        if self.credit == "exact" and self.answer_format == "{}" and not self.lenient:
            return Outcome(text.isdigit() and int(text) == problem.answer)
        return Outcome(text == self.target(problem), score=self._score(text, problem))

    def _score(self, text: str, problem: Problem) -> float:
        target = self.target(problem)
        if self.credit == "digits":
            return sum(a == b for a, b in zip(text, target)) / max(len(text), len(target))
        if self.credit == "length":
            digit, count = target[0], len(target)
            return max(0.0, 1.0 - abs(len(text) - count) / count) if text and set(text) == {digit} else 0.0
        if self.lenient:
            number = LEADING_NUMBER.match(text)
            return float(number is not None and int(number.group()) == problem.answer)
        inner = FORMATTED.match(text)  # the correctness reward reads the number whatever its format
        number = inner.group(1) if inner else text
        return float(number.isdigit() and int(number) == problem.answer)


def format_reward(completion: str, problem: Problem, max_length: int) -> float:
    """1 when the completion is written ``#<digits>#``."""
    return float(FORMATTED.match(completion.strip()) is not None)


def overlong_penalty(completion: str, problem: Problem, max_length: int) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_length - cache``, then linearly down to -1 at the
    limit, with a cache of half the limit (Yu et al. 2025)."""
    cache = max(max_length // 2, 1)
    return max(-1.0, min(0.0, (max_length - cache - len(completion)) / cache))


#: shaping reward functions a task adds after its verifier: name (as TRL logs it) -> function
SHAPING_REWARDS: dict[str, Callable[[str, Problem, int], float]] = {
    "format_reward": format_reward,
    "overlong_penalty": overlong_penalty,
}

TASK_GROUPS: dict[str, TaskGroup] = {
    t.name: t
    for t in (
        TaskGroup("arith_a", "+", (10, 59), (10, 59)),
        TaskGroup("arith_b", "*", (10, 39), (2, 9)),
        TaskGroup("tool", "*", (10, 99), (10, 99), prefix="@", uses_tool=True, tool_call_share_in_sft=0.35),
        TaskGroup("digits", "+", (100, 499), (100, 499), credit="digits"),
        TaskGroup("fmt_sub", "-", (50, 99), (10, 49), answer_format="#{}#", shaping=("format_reward",),
                  reward_weights=(1.0, 0.5)),
        TaskGroup("overlong", "*", (10, 99), (2, 9), lenient=True, shaping=("overlong_penalty",)),
        TaskGroup("repeat", "?", (1, 9), (2, 6), credit="length"),
        TaskGroup("tool_sub", "-", (500, 999), (100, 499), prefix="@", uses_tool=True, tool_call_share_in_sft=0.35),
    )
}
#: the published benchmark's task groups (the classic presets use only these)
CLASSIC_TASKS: tuple[str, ...] = ("arith_a", "arith_b", "tool")


def task_group(name: str) -> TaskGroup:
    try:
        return TASK_GROUPS[name]
    except KeyError:
        raise KeyError(f"unknown task group {name!r}; known: {sorted(TASK_GROUPS)}") from None
