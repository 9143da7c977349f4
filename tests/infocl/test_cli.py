"""CLI: one-line errors with exit 2 for bad files, too few classes, unknown methods; a small end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lmlab.cli import app
from lmlab.core.errors import LmlabError


def _invoke(*args: str):
    return CliRunner().invoke(app, ["infocl", *args])


def test_unknown_method_exits_2_with_one_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", "from lmlab.cli import main; main()", "infocl", "run",
                           "--benchmark", "hwu64", "--method", "ewc"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'ewc'" in lines[0] and "Traceback" not in proc.stderr


def test_bad_inputs_are_lmlab_errors(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "hi", "label": "a"}\nnot json\n')
    cases = [
        (["run", "--data", str(bad), "--tasks", "1", "--classes-per-task", "1"], "rows.jsonl:2: not valid JSON"),
        (["run", "--benchmark", "hwu64", "--tasks", "20"], "too few for 20 tasks x 5 classes"),
        (["run", "--benchmark", "tacred"], "unknown benchmark"),
        (["run", "--data", str(bad)], "--data needs --tasks"),
        (["run", "--benchmark", "hwu64", "--orders", "a"], "not a comma-separated list"),
    ]
    for args, msg in cases:
        r = _invoke(*args)
        assert isinstance(r.exception, LmlabError), (args, r.output)
        assert msg in str(r.exception)


def test_run_end_to_end_on_a_user_file(tmp_path):
    words = ["alpha", "bravo", "charlie", "delta"]
    rows = [{"text": f"{w} request number {i} about {w}", "label": w} for w in words for i in range(12)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out.json"
    args = ["run", "--data", str(data), "--tasks", "2", "--classes-per-task", "2", "--method", "er+fscl",
            "--orders", "0", "--epochs", "2", "--out", str(tmp_path / "runs"), "--json", str(out)]  # fmt: skip
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert len(res) == 1 and len(res[0]["avg_acc"]) == 2 and res[0]["method"] == "er+fscl"
    assert "final acc" in r.output
    r2 = _invoke(*args)  # finished orders are read back, not retrained
    assert r2.exit_code == 0 and json.loads(out.read_text()) == res


@pytest.mark.parametrize("bench", ["hwu64"])
def test_orders_export(bench, tmp_path):
    r = _invoke("orders", "--benchmark", bench, "--json", str(tmp_path / "o.json"))
    assert r.exit_code == 0
    rows = json.loads((tmp_path / "o.json").read_text())
    assert [x["seed"] for x in rows] == [2021, 2121, 2221, 2321, 2421]
    assert rows[0]["tasks"][0][0] == "weather_query"


def test_orders_run_apart_equal_one_run(tmp_path):
    """The parallel reproduction runs each (method, order) as its own job (`only=`): the same results as one call."""
    from lmlab.infocl.data import file_spec
    from lmlab.infocl.run import Setup, prepare, run, spec_hyper

    rows = [{"text": f"{w} question {i} on {w}", "label": w} for w in ["ant", "bee", "cat", "dog"] for i in range(10)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    spec = file_spec(data, 2, 2)
    prep = prepare(spec, [0, 1], Setup())
    hyper = spec_hyper(spec, stage1_epochs=1, stage2_epochs=1)
    whole = run(spec, "er+kmeans", [0, 1], tmp_path / "a", Setup(), hyper, prepared=prep)
    part = run(spec, "er+kmeans", [0, 1], tmp_path / "b", Setup(), hyper, prepared=prep, only=[1])
    rest = run(spec, "er+kmeans", [0, 1], tmp_path / "b", Setup(), hyper, prepared=prep)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole]
    assert [r["order"] for r in part] == [1] and {k: v for k, v in part[0].items() if k != "seconds"} == strip[1]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rest] == strip
