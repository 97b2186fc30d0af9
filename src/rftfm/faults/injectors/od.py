"""OD family: the optimiser / loss configuration is wrong."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from rftfm.faults.injectors.base import FaultInjector, KnobPush, injects
from rftfm.knobs import get_knob, set_knob

injects("kl_misconfig", "entropy_collapse")(KnobPush)


@injects("lr_high", "lr_low")
class LearningRateMultiplier(FaultInjector):
    def configure(self, trainer: Any) -> None:
        set_knob(trainer, "learning_rate", get_knob(trainer, "learning_rate") * self.params["lr_multiplier"])


@injects("numerical_blowup")
class PrecisionBlowup(FaultInjector):
    """Mixed precision misconfigured: from onset the policy's weights and Adam's moments are half precision,
    updated without loss scaling or fp32 master weights (and the LR pushed up by ``lr_multiplier``).

    Adam's epsilon (1e-8) underflows to 0 in float16, so parameters with tiny second moments take huge
    steps: the policy saturates onto one character, and with the LR push the gradients overflow to
    inf / NaN -- the weights turn NaN, as with ``torch_dtype=float16`` training in the wild.
    """

    def configure(self, trainer: Any) -> None:
        dtype = getattr(torch, self.params["dtype"])
        trainer.model.to(dtype)  # in place: the optimiser keeps the same parameter objects
        for state in trainer.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                    state[key] = value.to(dtype)
        set_knob(trainer, "learning_rate", get_knob(trainer, "learning_rate") * self.params["lr_multiplier"])


@injects("kl_dropped")
class KlDropped(FaultInjector):
    """The configured KL coefficient does not reach the loss: the loss sees ``beta x beta_factor`` (a stale
    default / a unit mix-up in a config layer) while the trainer still reports -- and logs the KL for --
    the configured beta."""

    @contextlib.contextmanager
    def loss_scope(self, trainer: Any, step: int) -> Iterator[None]:
        if not self.is_active(step) or trainer.beta == 0.0:
            yield
            return
        configured = trainer.beta
        trainer.beta = configured * self.params["beta_factor"]
        try:
            yield
        finally:
            trainer.beta = configured
