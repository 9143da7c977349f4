"""CLI: help, baselines, one-line errors, score on a stored file."""

import json

from typer.testing import CliRunner

from lmlab.cli import app

runner = CliRunner()


def test_help():
    for cmd in ("run", "score", "baselines", "reproduce", "bench"):
        r = runner.invoke(app, ["deepeval", cmd, "--help"])
        assert r.exit_code == 0, r.output


def test_baselines_json(tmp_path):
    r = runner.invoke(app, ["deepeval", "baselines", "-s", "deep_semantics", "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    rows = {x["baseline"]: x for x in json.loads((tmp_path / "b.json").read_text())}
    assert round(rows["shortest"]["accuracy"], 1) == 44.1


def _err(args, capsys, monkeypatch):
    """Through lmlab.cli.main, as the shell runs it: one line on stderr, exit status 2."""
    from lmlab.cli import main

    monkeypatch.setattr("sys.argv", ["lmlab", *args])
    try:
        main()
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("no error")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_one_line_errors(tmp_path, capsys, monkeypatch):
    def _e(args):
        return _err(args, capsys, monkeypatch)

    assert "unknown subtask 'colour'" in _e(["deepeval", "baselines", "-s", "colour"])
    assert "unknown backend 'tgi'" in _e(["deepeval", "run", "-b", "tgi", "-o", str(tmp_path / "p.jsonl")])
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "Title_Questions.json").write_text('{"Image_ID": "Img1"}\n')
    out = _e(["deepeval", "baselines", "-s", "title", "--data", str(bad)])
    assert "Title_Questions.json:1: missing field 'Options'" in out and len(out.splitlines()) == 1
    assert "no such file" in _e(["deepeval", "score", str(tmp_path / "none.jsonl")])
    assert "templates are 1, 2 and 3" in _e(["deepeval", "run", "--templates", "4", "-o", str(tmp_path / "p.jsonl")])
    assert "--conditions 'self'" in _e(["deepeval", "bench", "--conditions", "self"])


def test_score_stored_predictions(tmp_path):
    rec = {"model": "m", "subtask": "title", "template": 1, "item": "Img1", "rotation": 0, "gold": "B",
           "options": ["Rain", "Snow", "Fog", "Sun"], "output": "It is snow.", "prompt": "q"}  # fmt: skip
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "item": "Img2", "output": "A"}) + "\n")
    r = runner.invoke(app, ["deepeval", "score", str(p), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    acc = {x["scorer"]: x for x in json.loads((tmp_path / "s.json").read_text())["accuracy"]}
    assert acc["official"]["P1"] == 50.0 and acc["robust"]["P1"] == 50.0
