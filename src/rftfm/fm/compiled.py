"""numba's ``njit`` with its on-disk cache wherever numba finds a place to write one, in memory otherwise.

``njit(cache=True)`` raises at import when neither the package's directory nor the user's cache directory is
writable (a read-only installation run by a user without a home): the monitor must still load there, compiling its
kernels once per process instead of once per installation.
"""

from __future__ import annotations

from typing import Any, Callable

from numba import njit


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator: ``njit(cache=True, **options)``, or ``njit(**options)`` where numba cannot cache."""

    def wrap(function: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)

    return wrap
