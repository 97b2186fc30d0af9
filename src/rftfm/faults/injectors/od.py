"""OD family: the optimiser configuration is wrong."""

from __future__ import annotations

from rftfm.engine.knobs import get_knob, set_knob
from rftfm.faults.injectors.base import Injector


class OptimisationInjector(Injector):
    def configure(self, trainer) -> None:
        if self.name in ("lr_high", "lr_low"):
            set_knob(trainer, "learning_rate", get_knob(trainer, "learning_rate") * self.params["lr_multiplier"])
        elif self.name == "kl_misconfig":
            set_knob(trainer, "beta", self.params["beta"])
        else:
            raise ValueError(f"OD injector cannot inject {self.name!r}")
