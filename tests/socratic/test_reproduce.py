import json

import lmlab.core.backends as backends
from lmlab.core.report import ReproduceContext, missing_evidence
from lmlab.socratic.reproduce import METHODS, run

from .fakes import ScriptedBackend


def test_reproduce_mechanics_with_a_scripted_model(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "LocalBackend", lambda model, batch_size=8: ScriptedBackend(name=model))
    sec = run(ReproduceContext(out_dir=tmp_path, quick=True))
    d = sec.data
    assert d["jobs"] == d["jobs_run"] == 14 * len(METHODS)
    assert d["transcript"]["replay_identical_turns"] == 97 and sec.verdicts[0].holds and sec.verdicts[1].holds
    curve = d["curves"]["all/socratic+check"]
    assert [c["calls"] for c in curve] == [1, 2, 3, 4, 5] and all(c["n"] == 14 for c in curve)
    # the scripted model's "The answer is 42." / "5" never solves these: every method fails, and the
    # verdicts must then not claim a win
    assert all(c["success"] == 0 for k, cs in d["curves"].items() for c in cs)
    assert all(v.holds is not True for v in sec.verdicts[2:])
    assert d["problems"] == {"game24": 4, "arith": 4, "gsm8k": 2, "sat": 4} and d["seeds"] == [0, 1]
    # paired differences over the 14 shared problems: all zero here, and never a claimed win
    overall = [p for p in d["paired"] if p["task"] == "all"]
    assert len(overall) == len(sec.verdicts) - 2 and all(p["n"] == 14 and p["diff"] == 0 for p in overall)
    assert all(v.status == "inconclusive" for v in sec.verdicts[2:])
    assert not missing_evidence(sec.verdicts)  # the transcript's two exact checks say they are deterministic
    assert json.loads((tmp_path / "socratic.json").read_text())["jobs_run"] == d["jobs_run"]
    assert any(p.name.startswith("game24") for p in (tmp_path / "trees").iterdir())
    calls = d["cache_rows"]
    sec2 = run(ReproduceContext(out_dir=tmp_path, quick=True))  # rerun: every call from the cache
    assert sec2.data["cache_rows"] == calls and sec2.data["curves"] == d["curves"]
    assert d["model_calls_this_run"] == calls and sec2.data["model_calls_this_run"] == 0


def test_problem_sets_have_unique_ids_and_cover_every_task():
    from lmlab.socratic.reproduce import TASKS, _problems

    for quick in (True, False):
        ps = _problems(quick, 0)
        assert len({(p.task, p.id) for p in ps}) == len(ps) and {p.task for p in ps} == set(TASKS)
    assert [p.task for p in _problems(True, 0)][:4] == list(TASKS)  # round-robin: a cut run still covers all
