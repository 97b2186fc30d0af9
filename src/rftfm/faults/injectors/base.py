"""Base fault injector: a no-op whose hooks the family injectors override.

Hooks are called by the engine's trainer at the points where the fault lives in a real
pipeline (configuration, reward, tool sandbox, rollout policy, advantage computation).
No hook ever sees or edits a record after it was logged.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from rftfm.engine.tasks import Problem, Tool
from rftfm.faults.taxonomy import FaultType, Strength


class Injector:
    """No fault. Subclasses override only the hooks their family needs."""

    def __init__(self, fault: FaultType | None = None, strength: Strength | None = None, onset_step: int = 1, seed: int = 0):
        self.fault = fault
        self.strength = strength
        self.params: dict[str, Any] = dict(fault.params[strength]) if fault and strength else {}
        self.onset_step = onset_step
        self.rng = np.random.default_rng(seed + 7919)
        self._configured = False

    @property
    def name(self) -> str | None:
        return self.fault.name if self.fault else None

    def is_active(self, step: int) -> bool:
        """Whether the fault acts on (1-based) train step ``step``."""
        return self.fault is not None and step >= self.onset_step

    def before_rollout(self, trainer: Any, step: int) -> None:
        """Called before each rollout; applies a configuration fault once, at onset."""
        if self.is_active(step) and not self._configured:
            self._configured = True
            self.configure(trainer)

    # --- hooks -----------------------------------------------------------------------
    def configure(self, trainer: Any) -> None:
        """Change the trainer's configuration (a bad config push); default: nothing."""

    def rewards(self, rewards: np.ndarray, completions: list[str], problems: list[Problem], step: int) -> np.ndarray:
        return rewards

    def tool(self, tool: Tool, step: int) -> Tool:
        return tool

    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int, step: int) -> torch.Tensor:
        return advantages

    def uses_rollout_policy(self, step: int) -> bool:
        return False

    @contextlib.contextmanager
    def rollout_policy(self, model: torch.nn.Module, step: int) -> Iterator[None]:
        """Context in which ``model`` carries the weights rollouts are sampled from."""
        yield
