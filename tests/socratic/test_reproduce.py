import json

import lmlab.core.backends as backends
from lmlab.core.report import ReproduceContext
from lmlab.socratic.reproduce import METHODS, run, wilson

from .fakes import ScriptedBackend


def test_reproduce_mechanics_with_a_scripted_model(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "LocalBackend", lambda model, batch_size=8: ScriptedBackend(name=model))
    sec = run(ReproduceContext(out_dir=tmp_path, quick=True))
    d = sec.data
    assert d["jobs"] == d["jobs_run"] == 9 * len(METHODS)
    assert d["transcript"]["replay_identical_turns"] == 97 and sec.verdicts[0].holds and sec.verdicts[1].holds
    curve = d["curves"]["all/socratic+check"]
    assert [c["calls"] for c in curve] == [1, 2, 3, 4, 5] and all(c["n"] == 9 for c in curve)
    # the scripted model's "The answer is 42." / "5" never solves these: every method fails, and the
    # verdicts must then not claim a win
    assert all(c["success"] == 0 for k, cs in d["curves"].items() for c in cs)
    assert all(v.holds is not True for v in sec.verdicts[2:])
    assert json.loads((tmp_path / "socratic.json").read_text())["jobs_run"] == d["jobs_run"]
    assert any(p.name.startswith("game24") for p in (tmp_path / "trees").iterdir())
    calls = d["cache_rows"]
    sec2 = run(ReproduceContext(out_dir=tmp_path, quick=True))  # rerun: every call from the cache
    assert sec2.data["cache_rows"] == calls and sec2.data["curves"] == d["curves"]


def test_wilson_interval():
    lo, hi = wilson(0, 12)
    assert lo == 0.0 and 0.2 < hi < 0.3
    lo, hi = wilson(6, 12)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9
