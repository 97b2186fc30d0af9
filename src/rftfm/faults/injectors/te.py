"""TE family: the tool sandbox misbehaves."""

from __future__ import annotations

from rftfm.engine.tasks import Tool, ToolResult
from rftfm.faults.injectors.base import Injector


class ToolInjector(Injector):
    def tool(self, tool: Tool, step: int) -> Tool:
        if not self.is_active(step):
            return tool
        p, rng = self.params, self.rng

        def faulty(a: int, op: str, b: int) -> ToolResult:
            if self.name == "tool_failure":
                if rng.random() < p["failure_prob"]:
                    raise TimeoutError("calculator sandbox timed out")
                return tool(a, op, b)
            if self.name == "tool_corruption":
                result = tool(a, op, b)
                if result.value is not None and rng.random() < p["corrupt_prob"]:
                    return ToolResult(result.value + int(rng.integers(1, 50)) * int(rng.choice([-1, 1])))
                return result
            raise ValueError(f"TE injector cannot inject {self.name!r}")

        return faulty
