"""PG family: the rollout / sampling process is wrong."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from rftfm.faults.injectors.base import FaultInjector, KnobPush, injects

injects("sampling_temperature", "length_truncation", "degeneration", "length_clip_all")(KnobPush)


@injects("rollout_mismatch")
class RolloutMismatch(FaultInjector):
    """Rollouts come from a stale, perturbed copy of the policy: the rollout engine missed weight syncs."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._behaviour: dict[str, torch.Tensor] | None = None
        self._synced_at = -1

    def uses_rollout_policy(self, step: int) -> bool:
        return self.is_active(step)

    @contextlib.contextmanager
    def rollout_policy(self, model: torch.nn.Module, step: int) -> Iterator[None]:
        if not self.uses_rollout_policy(step):
            yield
            return
        if self._behaviour is None or step - self._synced_at >= self.params["sync_every"]:
            noise = self.params["weight_noise"]
            self._behaviour = {
                k: v.detach() * (1 + noise * torch.randn_like(v)) if v.is_floating_point() else v.detach().clone()
                for k, v in model.state_dict().items()
            }
            self._synced_at = step
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self._behaviour)
        try:
            yield
        finally:
            model.load_state_dict(live)
