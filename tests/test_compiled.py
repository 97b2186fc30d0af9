"""The kernels' decorator: numba's on-disk cache where it can write one, in memory where it cannot."""

from __future__ import annotations

import numba.core.caching as caching

from rftfm.fm.compiled import compiled


def _add_one(x: float) -> float:
    return x + 1.0


def test_a_kernel_compiles_where_numba_can_cache_it():
    kernel = compiled()(_add_one)
    assert kernel(1.0) == 2.0
    assert kernel._cache is not None and type(kernel._cache).__name__ == "FunctionCache"


def test_a_kernel_still_compiles_where_numba_has_nowhere_to_write_its_cache(monkeypatch):
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # (renamed across numba versions)
    monkeypatch.setattr(impl, "_locator_classes", [])  # no writable place, as on a read-only installation
    kernel = compiled()(lambda x: x + 1.0)
    assert kernel(1.0) == 2.0
    assert type(kernel._cache).__name__ == "NullCache"
