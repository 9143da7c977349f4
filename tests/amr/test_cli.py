"""`lmlab amr ...` end to end on tiny models and small files; bad input is a one-line error with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmlab.amr.graphs import read_amr, write_amr
from lmlab.amr.parser import Parser, TrainSettings, train_plain, train_rgl
from lmlab.cli import app
from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data

TINY = dict(
    steps=6, warmup=2, d_model=16, layers=1, heads=2, ffn=32, batch_size=8, vocab_size=300, gate_dim=8, max_target=96
)


@pytest.fixture(scope="module")
def small():
    gs = read_amr(shared_data("amr_little_prince", "lpp-v3.0-test.txt"))
    return [g for g in gs if len(g.graph().triples) <= 12][:16]


@pytest.fixture(scope="module")
def tiny_parsers(small, tmp_path_factory):
    nlr = train_plain(small, "nlr", TrainSettings(**TINY))
    nrl = train_plain(small, "nrl", TrainSettings(**TINY), tok=nlr.tok)
    silver = nrl.parse_tokens([g.sentence for g in small], beam=1, max_len=24)
    rgl = train_rgl(small, silver, nrl, TrainSettings(**TINY))
    d = tmp_path_factory.mktemp("parsers")
    nlr.save(d / "nlr")
    rgl.save(d / "rgl")
    return d


def test_training_lowers_the_loss(small):
    st = TrainSettings(**{**TINY, "steps": 25, "lr": 3e-3})
    train_plain(small, "nlr", st)
    assert st.history[-1]["loss"] < st.history[0]["loss"]


def test_parse_cli_writes_valid_graphs_with_status(tiny_parsers, small, tmp_path):
    (tmp_path / "s.txt").write_text("\n".join(g.sentence for g in small[:4]) + "\n")
    for kind in ("nlr", "rgl"):
        out = tmp_path / f"{kind}.amr"
        r = CliRunner().invoke(
            app,
            [
                "amr",
                "parse",
                str(tmp_path / "s.txt"),
                "-m",
                str(tiny_parsers / kind),
                "-o",
                str(out),
                "--beam",
                "2",
                "--max-len",
                "24",
            ],
        )
        assert r.exit_code == 0, r.output
        graphs = read_amr(out)  # an untrained model's output, repaired into valid graphs
        assert len(graphs) == 4 and all(g.graph().triples for g in graphs)
        assert Parser.load(tiny_parsers / kind).kind == ("rgl" if kind == "rgl" else "plain")


def test_eval_cli_reports_both_metrics(tmp_path, small):
    write_amr(tmp_path / "g.amr", small[:2])
    r = CliRunner().invoke(
        app,
        [
            "amr",
            "eval",
            str(tmp_path / "g.amr"),
            str(tmp_path / "g.amr"),
            "--json",
            str(tmp_path / "e.json"),
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "snowblink" in r.output and "ILP" in r.output and "SRL" in r.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["smatch_snowblink"]["F1"] == 100.0 and e["smatch_ilp"]["F1"] == 100.0
    assert len(e["position_f1"]["nodes"]) == 10 and (tmp_path / "p.png").stat().st_size > 0


def test_linearize_cli_round_trip(tmp_path, small):
    write_amr(tmp_path / "g.amr", small[:5])
    for order in ("nlr", "nrl"):
        r = CliRunner().invoke(
            app, ["amr", "linearize", str(tmp_path / "g.amr"), "--order", order, "-o", str(tmp_path / f"{order}.txt")]
        )
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(
            app, ["amr", "linearize", str(tmp_path / f"{order}.txt"), "--inverse", "-o", str(tmp_path / f"{order}.amr")]
        )
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(app, ["amr", "eval", str(tmp_path / f"{order}.amr"), str(tmp_path / "g.amr")])
        assert "| 100.00 |" in r.output


@pytest.mark.parametrize(
    "content,needle",
    [
        ("# ::id bad1\n(a / b :ARG0 (c / d)\n", "bad1"),
        ("", "no AMR graphs"),
        ("# ::id bad2\n(a / b :AR$G0 c)\n", "bad2"),
    ],
)
def test_bad_input_is_a_one_line_lmlab_error(tmp_path, content, needle):
    (tmp_path / "x.amr").write_text(content)
    r = CliRunner().invoke(app, ["amr", "eval", str(tmp_path / "x.amr"), str(tmp_path / "x.amr")])
    assert isinstance(r.exception, LmlabError) and needle in str(r.exception) and "\n" not in str(r.exception)


def test_cli_exit_code_2_without_traceback(tmp_path):
    (tmp_path / "x.amr").write_text("# ::id bad1\n(a / b :ARG0 (c / d)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "amr", "linearize", str(tmp_path / "x.amr")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 2 and "bad1" in p.stderr and "Traceback" not in p.stderr


def test_generation_never_runs_past_the_position_table(small):
    """Regression: an untrained model generating 4 x input + 32 tokens overflowed a short position table."""
    st = TrainSettings(**{**TINY, "steps": 1, "max_source": 20, "max_target": 20})
    p = train_plain(small[:4], "nlr", st)
    graphs = p.parse([small[0].sentence + " and more words to make it long"], beam=1)
    assert p.model.config.max_position_embeddings == 28 and graphs[0].graph().triples
