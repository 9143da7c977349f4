"""Process pools of the reproductions: an exception (Ctrl-C) in the parent stops the workers instead of draining."""

from __future__ import annotations

import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from lmlab.core.workers import process_pool


def _ended(proc) -> bool:
    """The process has exited (the executor's own thread may have reaped it first, leaving `is_alive` stale)."""
    proc.join(30)
    if proc.exitcode is not None:
        return True
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_leaving_by_an_exception_cancels_the_queue_and_stops_the_workers():
    """`infocl reproduce` kept training every queued run for minutes after a Ctrl-C: a bare ProcessPoolExecutor
    waits for its queue on the way out. Here the queued jobs are cancelled and the running ones' processes end."""
    with pytest.raises(KeyboardInterrupt):
        with process_pool(2) as pool:
            assert pool.submit(abs, -1).result() == 1  # a worker is up
            futs = [pool.submit(time.sleep, 60) for _ in range(8)]
            while len(pool._processes) < 2 or not all(p.is_alive() for p in pool._processes.values()):
                time.sleep(0.05)
            procs = list(pool._processes.values())
            raise KeyboardInterrupt
    assert len(procs) == 2 and all(_ended(p) for p in procs)
    # The executor hands at most workers + 1 jobs to its call queue (EXTRA_QUEUED_CALLS), so of 8 at least 8 - 2 - 3
    # were still the parent's to cancel; none of the others ran to an end (their workers were killed).
    assert sum(f.cancelled() for f in futs) >= 3
    for f in futs:
        if not f.cancelled():
            with pytest.raises(BrokenProcessPool):
                f.result(timeout=30)


def test_a_normal_exit_finishes_every_job():
    with process_pool(2) as pool:
        futs = [pool.submit(abs, -i) for i in range(5)]
    assert [f.result() for f in futs] == [0, 1, 2, 3, 4]
