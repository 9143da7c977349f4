"""A killed kernel build must not hang later runs (torch's loader waits forever on a lock file left behind)."""

from __future__ import annotations

import os
import time

from lmlab.core.kernels import STALE_LOCK_S, _clear_stale_lock


def test_a_dead_builds_lock_is_removed_a_live_one_kept(tmp_path):
    old, fresh = tmp_path / "old" / "lock", tmp_path / "fresh" / "lock"
    for p in (old, fresh):
        p.parent.mkdir()
        p.touch()
    past = time.time() - STALE_LOCK_S - 60
    os.utime(old, (past, past))
    _clear_stale_lock(old)
    _clear_stale_lock(fresh)
    _clear_stale_lock(tmp_path / "none" / "lock")  # no lock: nothing to do
    assert not old.exists() and fresh.exists()
