"""The reproduction pipeline end to end at toy size: JSON schema, parameter parity, resume from cache,
the report section, and one-line errors for bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from lmlab.core.errors import LmlabError
from lmlab.core.report import ReproduceContext
from lmlab.moe import experiment, reproduce
from lmlab.moe.data import load_documents, stdlib_documents

TINY = experiment.Setup(
    vocab=300,
    hidden=32,
    layers=1,
    heads=2,
    width=32,
    seq_len=16,
    batch=4,
    steps=3,
    warmup=1,
    eval_windows=4,
    seeds=[0, 1],
)


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))  # start from an empty cache
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": d[:3000]}) for d in stdlib_documents()[:24]))
    return str(path)


def test_run_all_schema_parity_and_resume(corpus):
    s = replace(TINY, data=corpus)
    saved = []
    res = experiment.run_all(s, log=lambda m: None, save=saved.append)
    assert {r["arch"] for r in res["runs"]} == set(experiment.MAIN) and len(res["runs"]) == 8
    for r in res["runs"]:
        assert {"arch", "seed", "val_loss", "total_params", "activated_params", "flops_per_token"} <= set(r)
        assert 0 < r["val_loss"] < 10
    by = {r["arch"]: r for r in res["runs"] if r["seed"] == 0}
    # equal total and activated expert params (GShard 0+2/16 vs DeepSeekMoE 1+7/63 at W/4), up to router size
    router_diff = (63 - 16) * TINY.hidden * TINY.layers
    assert by["deepseekmoe"]["total_params"] - by["gshard"]["total_params"] == router_diff
    assert by["deepseekmoe"]["activated_params"] - by["gshard"]["activated_params"] == router_diff
    assert by["switch"]["activated_params"] < by["gshard"]["activated_params"]
    assert [a["arch"] for a in res["ablation"]] == experiment.LADDER
    sp = res["specialization"]["masked_top"]["deepseekmoe"]
    assert sp["masked_experts"] == [0, 4, 8, 12, 16] and len(sp["val_loss"]) == 5
    assert set(res["specialization"]["shared"]) == {"with_shared", "shared_disabled_plus_one_routed"}
    assert len(saved) > 8  # partial results are written after every run
    again = experiment.run_all(s, log=lambda m: None)  # resumes entirely from the per-run cache
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in res["runs"]]


def test_report_section(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "QUICK", replace(TINY, data=corpus, seeds=[0]))
    sec = reproduce.run(ReproduceContext(out_dir=tmp_path, quick=True))
    assert sec.figures and sec.figures[0].exists()
    assert len(sec.verdicts) == 7 and "Held-out loss" in sec.markdown
    assert (tmp_path / "moe_results.json").exists()


def test_bad_data_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(LmlabError, match="bad.jsonl:2"):
        load_documents(str(bad))
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "moe", "reproduce", "--quick", "--data", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope.txt" in proc.stderr
