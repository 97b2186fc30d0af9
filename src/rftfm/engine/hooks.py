"""Where a fault can act on a training run: the hook interface the engine's trainer calls.

:class:`Injector` is the no-op base (a clean run). The trainer calls its hooks at the
points where a fault lives in a real pipeline -- configuration before a rollout, the
verifier's rewards, the tool sandbox, the rollout policy's weights, the advantages, the
loss computation -- and never on a record after it was logged. Concrete injectors live in
:mod:`rftfm.faults.injectors`; the engine depends only on this interface.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from rftfm.engine.tasks import Problem, Tool


class Injector:
    """No fault. Fault injectors override the hooks their fault needs."""

    name: str | None = None

    def is_active(self, step: int) -> bool:
        """Whether the fault acts on (1-based) train step ``step``."""
        return False

    def before_rollout(self, trainer: Any, step: int) -> None:
        """Called before each rollout (the place for a configuration push)."""

    def rewards(self, rewards: np.ndarray, completions: list[str], problems: list[Problem], step: int) -> np.ndarray:
        """The verifier's rewards as the reward function returns them (NaN: the function returned None)."""
        return rewards

    def tool(self, tool: Tool, step: int) -> Tool:
        """The tool the environment executes."""
        return tool

    def advantages(self, advantages: torch.Tensor, lengths: torch.Tensor, num_generations: int,
                   step: int) -> torch.Tensor:
        """The advantages the loss uses."""
        return advantages

    def uses_rollout_policy(self, step: int) -> bool:
        """Whether rollouts come from other weights than the trained policy's (see :meth:`rollout_policy`)."""
        return False

    @contextlib.contextmanager
    def rollout_policy(self, model: torch.nn.Module, step: int) -> Iterator[None]:
        """Context in which ``model`` carries the weights rollouts are sampled from."""
        yield

    @contextlib.contextmanager
    def loss_scope(self, trainer: Any, step: int) -> Iterator[None]:
        """Context in which the trainer computes the loss of step ``step``."""
        yield
