"""One process-pool loop for the benchmark's long jobs (generation, remediation evaluation)."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Iterator, Sequence


def run_in_pool(fn: Callable[..., Any], tasks: Sequence[tuple], workers: int, *,
                warmup: tuple[Callable[..., Any], Sequence[tuple]] | None = None,
                init: tuple[Callable[..., Any], tuple] | None = None) -> Iterator[Any]:
    """Yield ``fn(*task)`` for every task, in completion order.

    ``workers > 1`` runs them in that many spawned processes (torch is not fork-safe);
    ``warmup = (g, args)`` first runs ``g(*a)`` for every ``a`` in the pool (e.g. build caches
    each worker needs); ``init = (h, args)`` runs ``h(*args)`` once in every worker process before its
    first task (once in this process when ``workers <= 1``): a module-level function, as spawn pickles it.
    """
    if not tasks:
        return
    if workers <= 1:
        if init is not None:
            init[0](*init[1])
        if warmup is not None:
            for args in warmup[1]:
                warmup[0](*args)
        for task in tasks:
            yield fn(*task)
        return
    per_worker = {"initializer": init[0], "initargs": init[1]} if init is not None else {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), **per_worker) as pool:
        if warmup is not None and warmup[1]:
            list(pool.map(warmup[0], *zip(*warmup[1])))
        pending = {pool.submit(fn, *task) for task in tasks}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
