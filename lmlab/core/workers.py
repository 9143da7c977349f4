"""Process pools for a reproduction's independent runs, that stop when told to.

Why not a bare `ProcessPoolExecutor`: on Ctrl-C (or any error in the parent) its `with` block waits for every job
already queued, and a worker that gets the SIGINT itself reports it as that job's result and takes the next one, so
`lmlab infocl reproduce` kept training for minutes after a Ctrl-C. Here pending jobs are cancelled and the workers
terminated at once; what finished is on disk already (each run writes its results atomically), so a rerun resumes.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(
    workers: int, initializer: Callable | None = None, initargs: tuple = ()
) -> Iterator[ProcessPoolExecutor]:
    """`workers` spawned processes (no forked torch state); on leaving by an exception they are stopped, not drained."""
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer, initargs=initargs)
    try:
        yield pool
    except BaseException:
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
