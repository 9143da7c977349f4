"""Process pools for a reproduction's independent runs, that stop when told to.

Why not a bare `ProcessPoolExecutor`: on Ctrl-C (or any error in the parent) its `with` block waits for every job
already queued, and a worker that gets the SIGINT itself reports it as that job's result and takes the next one, so
`lmlab infocl reproduce` kept training for minutes after a Ctrl-C. Here pending jobs are cancelled and the workers
terminated at once; what finished is on disk already (each run writes its results atomically), so a rerun resumes.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager


class _Pool(ProcessPoolExecutor):
    """Remembers what it was given, so that leaving by an exception can cancel the queue itself: the executor's own
    `cancel_futures` is done later by its manager thread, which, once the workers are killed, marks the same jobs
    'broken' instead (a race the CI saw: 0 of 8 queued jobs cancelled)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.futures: list[Future] = []

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        fut = super().submit(fn, *args, **kwargs)
        self.futures.append(fut)
        return fut


@contextmanager
def process_pool(
    workers: int, initializer: Callable | None = None, initargs: tuple = ()
) -> Iterator[ProcessPoolExecutor]:
    """`workers` spawned processes (no forked torch state); on leaving by an exception they are stopped, not drained."""
    pool = _Pool(workers, mp_context=mp.get_context("spawn"), initializer=initializer, initargs=initargs)
    try:
        yield pool
    except BaseException:
        for fut in pool.futures:  # in this thread, before the workers go: what no worker holds yet never starts
            fut.cancel()
        stop = getattr(pool, "terminate_workers", None)  # Python >= 3.14
        if stop is not None:
            stop()
        else:  # the executor's own process table (no public handle before 3.14; shutdown() clears it)
            procs = list((pool._processes or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
        raise
    pool.shutdown(wait=True)
