"""The reproduction pipeline end to end at toy size: JSON schema, parameter parity, resume from cache,
the report section, and one-line errors for bad data."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.core.paths import cache_dir
from lmlab.core.report import STATUSES, ReproduceContext
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


def _empty_cache(root, monkeypatch) -> None:
    """An empty lmlab cache, except for the compiled kernels (`ext`, minutes to rebuild and no part of a run)."""
    ext = cache_dir("ext")
    root.mkdir(parents=True)
    (root / "ext").symlink_to(ext, target_is_directory=True)
    monkeypatch.setenv("LMLAB_CACHE", str(root))


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    _empty_cache(tmp_path / "cache", monkeypatch)  # no cached runs or corpora
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": d[:3000]}) for d in stdlib_documents()[:24]))
    return str(path)


def test_run_all_schema_parity_and_resume(corpus):
    s = replace(TINY, data=corpus)
    saved = []
    res = experiment.run_all(s, log=lambda m: None, save=saved.append)
    assert {r["arch"] for r in res["runs"]} == set(experiment.MAIN) and len(res["runs"]) == 8
    for r in res["runs"]:
        assert {"arch", "seed", "val_loss", "total_params", "activated_params", "flops_per_token", "curve"} <= set(r)
        assert 0 < r["val_loss"] < 10 and r["cached"] is False
        assert [p["step"] for p in r["curve"]] == [1, 2, 3]  # steps // curve_points = 1, and the last step
        assert r["curve"][-1]["val_loss"] == r["val_loss"]  # the final point is the reported loss
        assert [p["tokens"] for p in r["curve"]] == [k * TINY.batch * TINY.seq_len for k in (1, 2, 3)]
    by = {r["arch"]: r for r in res["runs"] if r["seed"] == 0}
    # the paper's accounting: equal total and activated expert params (GShard 0+2/16 vs DeepSeekMoE 1+7/63 at
    # W/4), up to the router's size; Dense = one FFN of width W = the activated size of one GShard expert
    router_diff = (63 - 16) * TINY.hidden * TINY.layers
    assert by["deepseekmoe"]["total_params"] - by["gshard"]["total_params"] == router_diff
    assert by["deepseekmoe"]["activated_params"] - by["gshard"]["activated_params"] == router_diff
    ffn = 3 * TINY.hidden * TINY.width * TINY.layers
    assert by["gshard"]["activated_params"] - by["dense"]["activated_params"] == ffn + 16 * TINY.hidden * TINY.layers
    assert by["switch"]["activated_params"] < by["gshard"]["activated_params"]
    assert [a["arch"] for a in res["ablation"]] == experiment.LADDER * 2  # the ladder for every seed
    assert [sp["seed"] for sp in res["specialization"]] == [0, 1]
    sp = res["specialization"][0]["masked_top"]["deepseekmoe"]
    assert sp["masked_experts"] == [0, 4, 8, 12, 16] and len(sp["val_loss"]) == 5
    assert set(res["specialization"][0]["shared"]) == {"with_shared", "shared_disabled_plus_one_routed"}
    assert len(saved) > 8  # partial results are written after every run
    again = experiment.run_all(s, log=lambda m: None)  # resumes entirely from the per-run cache
    assert all(r["cached"] for r in again["runs"])
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in res["runs"]]


def test_fresh_runs_are_bit_identical_to_cached_ones(corpus, tmp_path, monkeypatch):
    """What makes reusing a cached run honest: training is deterministic, so a fresh process with an empty cache
    reproduces every number (final loss and the whole curve) bit for bit."""
    s = replace(TINY, data=corpus, seeds=[0], archs=["gshard", "deepseekmoe"], ladder=False)
    first = experiment.run_all(s, log=lambda m: None)
    _empty_cache(tmp_path / "empty", monkeypatch)
    fresh = experiment.run_all(s, log=lambda m: None)
    assert not any(r["cached"] for r in fresh["runs"])
    for a, b in zip(first["runs"], fresh["runs"]):
        assert a["val_loss"] == b["val_loss"] and a["curve"] == b["curve"]
    assert first["specialization"] == fresh["specialization"]


def test_cache_key_holds_code_fingerprint_and_device(monkeypatch):
    k = TINY.key("gshard", 0)
    assert TINY.key("gshard", 0, "cuda") != k and TINY.key("gshard", 1) != k
    assert replace(TINY, seeds=[5], ladder=False, archs=["gshard", "deepseekmoe"]).key("gshard", 0) == k
    assert replace(TINY, curve_points=2).key("gshard", 0) != k
    monkeypatch.setattr(experiment, "fingerprint", lambda: "other-code")
    assert TINY.key("gshard", 0) != k  # changed training code: cached runs are not reused


def test_curve_does_not_change_training(corpus):
    """Evaluating along the way draws no randomness and touches no state: the final model is the same."""
    s = replace(TINY, data=corpus, seeds=[1], archs=["gshard", "deepseekmoe"], ladder=False)
    with_curve = experiment.run_all(s, log=lambda m: None)
    without = experiment.run_all(replace(s, curve_points=0), log=lambda m: None)
    assert [r["val_loss"] for r in with_curve["runs"]] == [r["val_loss"] for r in without["runs"]]
    assert all(len(r["curve"]) == 1 for r in without["runs"])  # final point only


def test_same_seed_shares_non_ffn_init():
    """Common random numbers: one seed gives every architecture the same embeddings, attention and norms."""
    dense, ds = (experiment.build_model(TINY, a, seed=3).state_dict() for a in ("dense", "deepseekmoe"))
    other = experiment.build_model(TINY, "dense", seed=4).state_dict()
    shared = [k for k in dense if ".mlp." not in k]
    assert shared and all(torch.equal(dense[k], ds[k]) for k in shared)
    assert not torch.equal(dense["embed.weight"], other["embed.weight"])
    assert not torch.equal(dense["layers.0.attn.wqkv.weight"], other["layers.0.attn.wqkv.weight"])


def test_report_section_trains_three_seeds(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(
        reproduce, "QUICK_REPORT", replace(TINY, data=corpus, archs=["dense", "gshard", "deepseekmoe"], ladder=False)
    )
    assert reproduce.report_setup(True, seed=5).seeds == [5, 6, 7]
    sec = reproduce.run(ReproduceContext(out_dir=tmp_path, quick=True, seed=0))
    assert sec.figures and sec.figures[0].exists()
    assert len(sec.verdicts) == 7 and "Held-out loss" in sec.markdown and "vs training steps" in sec.markdown
    assert (tmp_path / "moe_results.json").exists()
    assert sorted({r["seed"] for r in sec.data["runs"]}) == [0, 1, 2]
    for v in sec.verdicts:
        assert v.status in STATUSES and (v.seeds is not None or v.status == "not tested")
        if isinstance(v.seeds, list):
            assert len(v.seeds) >= reproduce.MIN_SEEDS  # quick mode never calls a claim from fewer than 3 seeds
            assert v.interval is not None
    by = {v.claim.split(":")[0]: v for v in sec.verdicts}
    assert by["Switch beats Dense (Table 1"].status == "not tested"
    assert sec.verdicts[3].status == "holds"  # the parameter parity is an exact count
    bad = copy.deepcopy(sec.data)
    for r in bad["runs"]:
        if r["arch"] == "deepseekmoe":
            r["total_params"] += 1  # the control: one parameter off breaks the paper's accounting
    assert reproduce._verdicts(bad)[3].status == "does not hold"
    again = reproduce.run(ReproduceContext(out_dir=tmp_path, quick=True, seed=0))
    assert "loaded from the per-run cache under the same key" in again.markdown
    assert "All 9 runs trained in this process" in sec.markdown


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
