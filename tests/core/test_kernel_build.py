"""Building the kernels: a killed build must not hang later runs (torch's loader waits forever on a lock file left
behind), and the build must find its tools where a user's environment puts them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from lmlab.core import kernels
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


def test_the_ninja_wheel_is_found_when_the_venv_is_not_on_path(tmp_path, monkeypatch):
    """torch's loader runs `ninja` from PATH; `.venv/bin/lmlab` run without an activated venv has no venv folder on
    PATH, so on a machine with no system ninja the kernels were off. The control shows PATH alone finds none."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ninja") is None  # control: nothing on this PATH
    kernels._ninja_on_path()
    found = shutil.which("ninja")
    assert found is not None
    assert subprocess.run([found, "--version"], capture_output=True, text=True, check=True).stdout.strip()
