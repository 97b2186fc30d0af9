"""Fault injectors: one fault type of the registry at one strength, acting from its onset step.

Each concrete injector overrides the hooks of :class:`rftfm.engine.hooks.Injector` where its
fault lives, and registers itself for the fault type names it injects with :func:`injects`;
:func:`rftfm.faults.injectors.make_injector` looks the type up there (no second list of names).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np

from rftfm.engine.hooks import Injector
from rftfm.faults.taxonomy import FaultType, Strength
from rftfm.knobs import set_knob

#: fault type name -> injector class (filled by :func:`injects`)
INJECTORS: dict[str, type[FaultInjector]] = {}

T = TypeVar("T", bound=type["FaultInjector"])


def injects(*names: str) -> Callable[[T], T]:
    """Class decorator: register the injector for the fault types ``names``."""

    def register(cls: T) -> T:
        for name in names:
            if name in INJECTORS:
                raise ValueError(f"two injectors for {name!r}: {INJECTORS[name].__name__} and {cls.__name__}")
            INJECTORS[name] = cls
        return cls

    return register


class FaultInjector(Injector):
    """A registered fault at one strength; a configuration push (:meth:`configure`) happens once, at onset."""

    def __init__(self, fault: FaultType, strength: Strength, onset_step: int = 1, seed: int = 0):
        self.fault = fault
        self.strength = strength
        self.params: dict[str, Any] = dict(fault.params[strength])
        self.onset_step = onset_step
        self.rng = np.random.default_rng(seed + 7919)
        self._configured = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.fault.name

    def is_active(self, step: int) -> bool:
        return step >= self.onset_step

    def before_rollout(self, trainer: Any, step: int) -> None:
        if self.is_active(step) and not self._configured:
            self._configured = True
            self.configure(trainer)

    def configure(self, trainer: Any) -> None:
        """Change the trainer's configuration at onset (a bad configuration push); default: nothing."""


class KnobPush(FaultInjector):
    """A bad configuration push: at onset every parameter of the fault is set as the trainer knob it names."""

    def configure(self, trainer: Any) -> None:
        for knob, value in self.params.items():
            set_knob(trainer, knob, value)
