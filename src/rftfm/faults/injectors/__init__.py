"""Fault injectors, one module per family; :func:`make_injector` picks the right one."""

from __future__ import annotations

from rftfm.faults.injectors.base import Injector
from rftfm.faults.injectors.ca import CreditInjector
from rftfm.faults.injectors.od import OptimisationInjector
from rftfm.faults.injectors.pg import GenerationInjector
from rftfm.faults.injectors.rf import RewardInjector
from rftfm.faults.injectors.te import ToolInjector
from rftfm.faults.taxonomy import FAMILIES, Strength, fault_type

INJECTORS: dict[str, type[Injector]] = {
    "rf": RewardInjector,
    "pg": GenerationInjector,
    "od": OptimisationInjector,
    "ca": CreditInjector,
    "te": ToolInjector,
}
assert set(INJECTORS) == set(FAMILIES), "every family needs an injector"


def make_injector(fault: str | None, strength: Strength | None, onset_step: int = 1, seed: int = 0) -> Injector:
    """The injector for ``fault`` at ``strength`` (``None``: a no-op for clean runs)."""
    if fault is None:
        return Injector(seed=seed)
    ftype = fault_type(fault)
    return INJECTORS[ftype.family](ftype, strength, onset_step=onset_step, seed=seed)


__all__ = ["INJECTORS", "Injector", "make_injector"]
