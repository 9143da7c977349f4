"""Kill a running GLAN job (SIGKILL: no cleanup, no atexit) and start it again: finished calls are not repeated."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from glan.scripted import ScriptedBackend
from lmlab.glan.pipeline import GlanConfig
from lmlab.glan.run import glan_run
from lmlab.glan.taxonomy import load_taxonomy
res = glan_run({out!r}, load_taxonomy()[:2], ScriptedBackend(delay=0.05, batch_size=2), GlanConfig(subjects_per_discipline=2, max_sessions=2, questions_per_subject=2))
print(res.status)
"""


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_killed_run_resumes_without_repeating_calls(tmp_path):
    out = tmp_path / "run"
    code = SCRIPT.format(tests=str(Path(__file__).parents[1]), out=str(out))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while _count(out / "calls.sqlite") < 9 and proc.poll() is None and time.time() < deadline:  # past stage 1
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still running: we kill it mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _count(out / "calls.sqlite")
    assert done_before >= 9 and not (out / "stats.json").exists()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "complete", r.stderr[-2000:]
    stages = json.loads((out / "stats.json").read_text())["stages"]
    assert sum(s["cached"] for s in stages) == done_before  # every call finished before the kill was reused
    assert sum(s["calls"] for s in stages) == _count(out / "calls.sqlite")  # and none was made twice
    assert (out / "glan.jsonl").read_text().strip()
