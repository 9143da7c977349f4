"""Core stands alone: it imports no system, and systems plug in through `lmlab.core.plugins`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lmlab
from lmlab.core import plugins
from lmlab.core.backends import LocalBackend
from lmlab.core.engine import SamplingParams
from lmlab.core.errors import LmlabError

CORE = Path(lmlab.__file__).parent / "core"


def test_core_source_names_no_system():
    """No `import lmlab.<system>` / `from ..<system>` anywhere in core, at module level or inside functions."""
    offenders = []
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for n in names:
                if any(n.startswith((f"lmlab.{s}", f"..{s}")) for s in lmlab.SYSTEMS) or n == "..":
                    offenders.append(f"{path.name}:{node.lineno}: {n}")
    assert offenders == []


def test_importing_core_loads_no_system():
    code = (
        "import sys, lmlab.core.loader, lmlab.core.backends, lmlab.core.engine, lmlab.core.serve, lmlab.core.report\n"
        "import lmlab\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2][-1] in lmlab.SYSTEMS and m.startswith('lmlab.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_systems_register_their_speculative_methods_on_demand():
    fn = plugins.speculative("pld")  # loads the declared systems (entry points) on first use
    assert callable(fn) and "lmlab.specdec" in sys.modules
    with pytest.raises(LmlabError, match="unknown method"):
        plugins.speculative("no-such-method")


def test_a_method_that_cannot_run_here_falls_back_to_plain_decoding(smollm, monkeypatch, caplog):
    def cannot_run(lm, ids, params):
        raise LmlabError("needs a GPU")

    monkeypatch.setitem(plugins.SPECULATIVE, "needs-gpu", cannot_run)
    be = LocalBackend.__new__(LocalBackend)  # reuse the session's model instead of loading another copy
    be.lm, be.name, be.batch_size, be.speculative = smollm, "smollm", 1, "needs-gpu"
    params = SamplingParams(max_new_tokens=6)
    with caplog.at_level("WARNING", logger="lmlab"):
        text = "".join(be.stream("The capital of France is", params))
    be.speculative = None
    assert text == "".join(be.stream("The capital of France is", params))
    assert "needs-gpu skipped: needs a GPU" in caplog.text
