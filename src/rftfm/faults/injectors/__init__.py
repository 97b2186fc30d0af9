"""Fault injectors, one module per family; :func:`make_injector` dispatches through the registry."""

from __future__ import annotations

from rftfm.engine.hooks import Injector
from rftfm.faults.injectors import ca, od, pg, rf, te  # noqa: F401  (each module registers its injectors)
from rftfm.faults.injectors.base import INJECTORS, FaultInjector
from rftfm.faults.taxonomy import FAULT_TYPES, Strength, fault_type

_missing = sorted(set(FAULT_TYPES) - set(INJECTORS))
assert not _missing, f"fault types without an injector: {_missing}"


def make_injector(fault: str | None, strength: Strength | None, onset_step: int = 1, seed: int = 0) -> Injector:
    """The injector for ``fault`` at ``strength`` (``None``: the engine's no-op, for clean runs)."""
    if fault is None:
        return Injector()
    if strength is None:
        raise ValueError(f"fault {fault!r} needs a strength")
    ftype = fault_type(fault)
    return INJECTORS[ftype.name](ftype, strength, onset_step=onset_step, seed=seed)


__all__ = ["INJECTORS", "FaultInjector", "Injector", "make_injector"]
