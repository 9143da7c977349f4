"""Loading from every source, round trips, and one-line errors for bad input (CLI exit code, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lmlab.core.errors import LmlabError
from lmlab.core.loader import load_model, resolve, save_checkpoint

TINY = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(TINY).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmlab.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_save_checkpoint_round_trips_through_transformers(ckpt, tmp_path):
    lm = load_model(str(ckpt), cache=False)
    out = save_checkpoint(lm.model, None, tmp_path / "saved")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, lm.model(ids, lm.model.new_cache(1, 16), logits="all").logits, atol=1e-5)
    again = load_model(str(out), cache=False).model
    for (k, a), (_, b) in zip(lm.model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_hub_id_resolves_from_local_hf_cache(ckpt, tmp_path, monkeypatch):
    """A hub id goes through huggingface_hub; offline, it is served from a populated HF cache."""
    rev = "0" * 40
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in ckpt.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve("acme/tiny-llama") == snap
    with pytest.raises(LmlabError, match="cannot fetch 'acme/missing'"):
        resolve("acme/missing")


def test_gguf_alias_is_cached_as_safetensors(smollm):
    assert (smollm.path / "model.safetensors").exists() and (smollm.path / "tokenizer.json").exists()
    assert resolve("smollm2-135m-instruct") == smollm.path  # second resolve: no conversion


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_bad_input_in_a_real_process(tmp_path):
    _one_line_error(run_cli("generate", "hi", "-m", str(tmp_path / "nope")), "nope")


@pytest.fixture()
def cli(capsys, monkeypatch):
    """Run `lmlab ARGS` in-process through the same entry point (main) as the console script."""
    from lmlab.cli import main

    def call(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["lmlab", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return call


def test_cli_bad_inputs_give_one_line_errors(ckpt, tmp_path, cli):
    """Same assertions as for a real process, without the interpreter start-up per case."""
    _one_line_error(cli("generate", "hi", "-m", "no-such-alias"), "no-such-alias", "lmlab models")

    arch = tmp_path / "bert"
    arch.mkdir()
    (arch / "config.json").write_text(
        json.dumps({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8})
    )
    _one_line_error(cli("generate", "hi", "-m", str(arch)), "unsupported architecture", "bert")

    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    (bad / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:300])
    _one_line_error(cli("generate", "hi", "-m", str(bad)), "model.safetensors", "corrupt")

    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(64))
    _one_line_error(cli("generate", "hi", "-m", str(gguf)), "broken.gguf")
    notgguf = tmp_path / "x.gguf"
    notgguf.write_bytes(b"hello")
    _one_line_error(cli("generate", "hi", "-m", str(notgguf)), "x.gguf", "not a GGUF")

    cfgbad = tmp_path / "badjson"
    cfgbad.mkdir()
    (cfgbad / "config.json").write_text("{ not json")
    _one_line_error(cli("generate", "hi", "-m", str(cfgbad)), "config.json", "line 1")


def test_cli_prompt_longer_than_context(ckpt, tmp_path, cli):
    from transformers import PreTrainedTokenizerFast

    from lmlab.core.train import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a b c d e f g"] * 10, 60)
    assert isinstance(tok, PreTrainedTokenizerFast)
    tok.save_pretrained(ckpt)
    _one_line_error(cli("generate", "a " * 40, "--raw", "-m", str(ckpt)), "context window")


@pytest.mark.slow
def test_cli_generate_and_models_on_embedded_model():
    proc = run_cli("generate", "What is the capital of France?", "-n", "12")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paris" in proc.stdout
    proc = run_cli("models")
    assert proc.returncode == 0 and "smollm2-135m-instruct" in proc.stdout


@pytest.mark.slow
def test_cli_chat_keeps_history_and_exits_on_empty_line():
    """The second reply is the greedy continuation of the whole conversation, not of the last line alone."""
    from lmlab.core.backends import LocalBackend
    from lmlab.core.engine import SamplingParams

    turns = ["My name is Ada.", "What is my name?"]
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "chat", "-t", "0", "-n", "16"],
        input="\n".join(turns) + "\n\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = [r.strip() for r in proc.stdout.split("> ") if r.strip()]
    be, p = LocalBackend(), SamplingParams(max_new_tokens=16)
    first = be.complete([[{"role": "user", "content": turns[0]}]], p)[0].text
    history = [
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": first},
        {"role": "user", "content": turns[1]},
    ]
    second = be.complete([history], p)[0].text
    alone = be.complete([[{"role": "user", "content": turns[1]}]], p)[0].text
    assert replies == [first.strip(), second.strip()]
    assert alone.strip() != second.strip()  # the control: without history the reply differs


def test_auto_dtype_picks_the_hardware_dtype(ckpt):
    """dtype="auto" is what `generate`/`serve` default to: bf16 where the CPU has native bf16 matmuls."""
    from lmlab.core.backends import auto_dtype

    assert load_model(str(ckpt), dtype="auto", cache=False).model.dtype == auto_dtype()
    with pytest.raises(LmlabError, match="unknown dtype 'fp8'"):
        load_model(str(ckpt), dtype="fp8")
