"""PG family: the rollout / sampling process is wrong."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from rftfm.engine.knobs import set_knob
from rftfm.faults.injectors.base import Injector


class GenerationInjector(Injector):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._behaviour: dict[str, torch.Tensor] | None = None
        self._synced_at = -1

    def configure(self, trainer) -> None:
        p = self.params
        if self.name == "sampling_temperature":
            set_knob(trainer, "temperature", p["temperature"])
        elif self.name == "length_truncation":
            set_knob(trainer, "max_completion_length", p["max_completion_length"])
        elif self.name == "degeneration":
            set_knob(trainer, "repetition_penalty", p["repetition_penalty"])
            set_knob(trainer, "eos_bias", p["eos_bias"])
        elif self.name != "rollout_mismatch":
            raise ValueError(f"PG injector cannot inject {self.name!r}")

    def uses_rollout_policy(self, step: int) -> bool:
        return self.name == "rollout_mismatch" and self.is_active(step)

    @contextlib.contextmanager
    def rollout_policy(self, model: torch.nn.Module, step: int) -> Iterator[None]:
        """Swap in stale, perturbed weights: the rollout engine missed weight syncs."""
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
