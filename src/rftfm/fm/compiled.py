"""numba's ``njit`` with its on-disk cache wherever numba finds a place to write one, in memory otherwise.

``njit(cache=True)`` raises at import when neither the package's directory nor the user's cache directory is
writable (a read-only installation run by a user without a home): the monitor must still load there, compiling its
kernels once per process instead of once per installation.

Compiling the kernels takes 15-20 s on a 2-core machine, once per installation (later processes load them from the
cache in about 0.3 s). So that the first record's pause is not taken for a hang, the first compilation of one of
these kernels in a process logs a warning that says what it is (:data:`COMPILING`); a cache hit logs nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from numba import njit
from numba.core import event

log = logging.getLogger(__name__)

COMPILING = (
    "rftfm: compiling the monitor's numba kernels (once per installation, about 15-20 s on 2 cores; "
    "later runs load them from the cache)"
)


class _FirstCompilation(event.Listener):
    """Logs :data:`COMPILING` at the start of the first compilation of an rftfm kernel in this process."""

    def __init__(self) -> None:
        self.told = False

    def on_start(self, compiling: event.Event) -> None:
        dispatcher = compiling.data.get("dispatcher") if isinstance(compiling.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if not self.told and module.startswith("rftfm."):
            self.told = True
            log.warning(COMPILING)

    def on_end(self, compiling: event.Event) -> None:
        pass


FIRST_COMPILATION = _FirstCompilation()
event.register("numba:compile", FIRST_COMPILATION)


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: ``njit(cache=True, **options)``, or ``njit(**options)`` where numba cannot cache."""

    def wrap(function: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)

    return wrap
