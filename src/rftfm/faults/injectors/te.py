"""TE family: the tool sandbox misbehaves."""

from __future__ import annotations

from rftfm.engine.tasks import Tool, ToolResult
from rftfm.faults.injectors.base import FaultInjector, injects


@injects("tool_failure")
class ToolFailure(FaultInjector):
    def tool(self, tool: Tool, step: int) -> Tool:
        if not self.is_active(step):
            return tool

        def failing(a: int, op: str, b: int) -> ToolResult:
            if self.rng.random() < self.params["failure_prob"]:
                raise TimeoutError("calculator sandbox timed out")
            return tool(a, op, b)

        return failing


@injects("tool_corruption")
class ToolCorruption(FaultInjector):
    def tool(self, tool: Tool, step: int) -> Tool:
        if not self.is_active(step):
            return tool

        def corrupting(a: int, op: str, b: int) -> ToolResult:
            result = tool(a, op, b)
            if result.value is not None and self.rng.random() < self.params["corrupt_prob"]:
                return ToolResult(result.value + int(self.rng.integers(1, 50)) * int(self.rng.choice([-1, 1])))
            return result

        return corrupting
