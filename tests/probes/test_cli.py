"""`lmlab probe ...` end to end on a tiny native checkpoint: JSON schema, figures, capture resume, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from lmlab.cli import app
from lmlab.core.loader import load_tokenizer, resolve, save_checkpoint
from lmlab.core.model import Transformer
from lmlab.probes.capture import ActivationStore


@pytest.fixture
def tiny_ckpt(tmp_path, monkeypatch, make_config):
    tok = load_tokenizer(resolve("smollm2-135m-instruct"))
    torch.manual_seed(0)
    path = save_checkpoint(Transformer(make_config(vocab=len(tok), hidden=32, layers=3)), tok, tmp_path / "tiny")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path / "cache"))
    return path


def test_numbers_json_schema_and_figures(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(
        app, ["probe", "make-data", str(tmp_path / "d.jsonl"), "--digits", "2,4", "--per-digit", "30"]
    )
    assert r.exit_code == 0, r.output
    args = [
        "probe",
        "numbers",
        "--model",
        str(tiny_ckpt),
        "--data",
        str(tmp_path / "d.jsonl"),
        "--json",
        str(tmp_path / "o.json"),
        "--mlp-layers",
        "3",
        "--addition-per-digit",
        "2",
        "--steer-prompts",
        "3",
        "--steer-window",
        "2",
        "--steer-alpha",
        "0.1",
        "--steer-alpha",
        "0.3",
        "--figures",
        str(tmp_path / "f"),
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["model"] == str(tiny_ckpt) and set(out["addition_accuracy"]) == {"2", "4"}
    rows = out["layers"]
    assert {(x["layer"], x["position"], x["target"]) for x in rows if x["probe"] == "ridge"} == {
        (l, p, t) for l in range(4) for p in ("a", "b", "last") for t in ("a", "b", "sum")
    }
    assert {x["layer"] for x in rows if x["probe"] == "mlp"} == {3}
    for x in rows:
        assert set(x) >= {"layer", "position", "target", "probe", "pearson", "r2", "acc_1pct", "mse"}
    assert len(out["random_init"]) == 4 * 9 and [s["layers"] for s in out["steering"]] == [[1, 2]]
    assert set(out["steering"][0]["by_alpha"]) == {"0.1", "0.3"}  # steps tuned on the val split
    st = out["steering_test"]  # the dev-chosen step, on test, against random directions
    assert st["alpha_frac"] == out["steering"][0]["alpha_frac"] and len(st["score"]) == len(st["random_score"]) == 3
    assert set(out["length_control"]) == {"trained", "random_init"}
    assert [r["seed"] for r in out["random_init_items"]] == [r["seed"] for r in out["length_control_random"]] == [0, 1]
    assert set(out["items"]) == {"a@a", "b@b", "last@sum", "acc"} and len(out["items"]["acc"]["y"]) == out["n_test"]
    from lmlab.core.report import missing_evidence
    from lmlab.probes.reproduce import verdicts

    assert missing_evidence(verdicts(out)) == []
    assert {p.name for p in (tmp_path / "f").iterdir()} == {
        "probes_heatmap_r2.png",
        "probes_heatmap_acc_1pct.png",
        "probes_r2_by_digits.png",
        "probes_steering.png",
    }


def test_capture_command_text_rows_both_backends_agree(tiny_ckpt, tmp_path):
    (tmp_path / "t.jsonl").write_text(
        '{"text": "hello there"}\n{"text": "a longer line of text here"}\n{"text": "x"}\n'
    )
    for backend in ("native", "transformers"):
        r = CliRunner().invoke(
            app,
            [
                "probe",
                "capture",
                "--model",
                str(tiny_ckpt),
                "--data",
                str(tmp_path / "t.jsonl"),
                "--out",
                str(tmp_path / backend),
                "--backend",
                backend,
                "--layers",
                "1,3",
                "--shard-rows",
                "2",
            ],
        )
        assert r.exit_code == 0, r.output
    nat, hf = ActivationStore.open(tmp_path / "native"), ActivationStore.open(tmp_path / "transformers")
    assert nat.num_shards == 2 and nat.position_names == ["last"]
    torch.testing.assert_close(torch.from_numpy(nat.layer(3)), torch.from_numpy(hf.layer(3)), atol=1e-4, rtol=1e-4)


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1, "b": 2, "split": "train"}\n{"a": "x", "b": 2}\n')
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lmlab.cli import main; main()",
            "probe",
            "numbers",
            "--data",
            str(bad),
            "--json",
            str(tmp_path / "o.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "bad.jsonl:2: field 'a' must be a positive integer" in p.stderr
