"""A run SIGKILLed mid-way continues from the call cache and the append-only tree: no completed call is sent
again, and the finished tree equals an uninterrupted run's."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from lmlab.socratic.calls import Caller
from lmlab.socratic.engine import EngineConfig, SocraticController
from lmlab.socratic.tree import TreeStore, load_tree

from .fakes import ScriptedBackend

CFG = dict(max_depth=2, max_breadth=2, verify="llm")
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from socratic.fakes import ScriptedBackend
from lmlab.core.llmcache import LLMCache
from lmlab.socratic.calls import Caller
from lmlab.socratic.engine import EngineConfig, SocraticController
from lmlab.socratic.tree import TreeStore
d = {d!r}
be = ScriptedBackend(delay=0.15, log=d + "/log")
r = SocraticController(Caller(be, LLMCache(d + "/calls.sqlite")), TreeStore(d + "/tree.jsonl"), EngineConfig(**{cfg!r})).run("2+3?")
print(r.stop_reason, r.calls["model_calls"])
"""


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_mid_run_then_resume(tmp_path):
    ref_store = TreeStore(None)
    ref_be = ScriptedBackend()
    SocraticController(Caller(ref_be), ref_store, EngineConfig(**CFG)).run("2+3?")
    n_ref = ref_be.calls
    assert n_ref >= 8

    script = SCRIPT.format(tests=str(Path(__file__).parent.parent), d=str(tmp_path), cfg=CFG)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while _rows(tmp_path / "calls.sqlite") < 4 and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
    done_before = _rows(tmp_path / "calls.sqlite")
    assert 4 <= done_before < n_ref

    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    reason, new_calls = out.stdout.split()
    assert reason == "done" and int(new_calls) == n_ref - done_before
    log = [json.loads(x) for x in (tmp_path / "log").read_text().splitlines()]
    # Each completed call is logged once. Only a call whose reply arrived in the instant between the check
    # above and the kill (before its cache commit) could be sent twice; the 0.15 s calls make that rare.
    assert n_ref <= len(log) <= n_ref + 1
    assert load_tree(tmp_path / "tree.jsonl").canonical() == ref_store.tree.canonical()
