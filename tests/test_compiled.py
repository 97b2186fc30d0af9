"""The kernels' decorator: numba's on-disk cache where it can write one, in memory where it cannot; the first
compilation of an rftfm kernel in a process says so."""

from __future__ import annotations

import logging

import numba.core.caching as caching
from numba import njit

from rftfm.fm.compiled import COMPILING, FIRST_COMPILATION, compiled


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


def test_the_first_compilation_of_a_kernel_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(FIRST_COMPILATION, "told", False)
    kernel = njit(_add_two)  # no cache: this compiles whatever ran before
    monkeypatch.setattr(_add_two, "__module__", "rftfm.fm.example")
    with caplog.at_level(logging.WARNING, logger="rftfm.fm.compiled"):
        assert kernel(1.0) == 3.0
        assert njit(_add_two)(2.0) == 4.0
    assert [r.getMessage() for r in caplog.records] == [COMPILING]


def test_another_librarys_compilation_says_nothing(monkeypatch, caplog):
    monkeypatch.setattr(FIRST_COMPILATION, "told", False)
    with caplog.at_level(logging.WARNING, logger="rftfm.fm.compiled"):
        assert njit(lambda x: x * 2.0)(2.0) == 4.0  # a function of this test module, not rftfm's
    assert caplog.records == [] and not FIRST_COMPILATION.told


def _add_two(x: float) -> float:
    return x + 2.0
