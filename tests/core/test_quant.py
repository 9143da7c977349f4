"""Weight-only int8: the fused kernel equals dequantize-then-matmul; the quantized model stays close to fp32."""

from __future__ import annotations

import torch
from torch import nn

from lmlab.core.loader import load_model
from lmlab.core.quant import Int8Linear


def test_int8_linear_equals_dequantized_matmul():
    lin = nn.Linear(64, 48, bias=True)
    q = Int8Linear(lin, torch.bfloat16)
    x = torch.randn(2, 3, 64)
    deq = q.weight.float() * q.scales.float()[:, None]
    ref = x.bfloat16().float() @ deq.T + q.bias.float()
    got = q(x).float()
    assert got.shape == (2, 3, 48)
    assert (got - ref).abs().max() < 0.02 * ref.abs().max()  # bf16 output rounding
    # within one quantization step (half a step from rounding, plus the bf16 rounding of the scales)
    assert (deq - lin.weight).abs().max() <= q.scales.float().max()


def test_int8_smollm2_agrees_with_fp32(smollm):
    q = load_model("smollm2-135m-instruct", dtype=torch.bfloat16, quant="int8", cache=False).model
    ids = torch.tensor(
        [smollm.tokenizer("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3).input_ids]
    )
    with torch.no_grad():
        ref = smollm.model(ids, smollm.model.new_cache(1, 128), logits="all").logits
        got = q(ids, q.new_cache(1, 128), logits="all").logits.float()
        agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        # control: a quantizer with scales off by 10 % is clearly worse
        for mod in q.modules():
            if isinstance(mod, Int8Linear):
                mod.scales.mul_(1.1)
        bad = q(ids, q.new_cache(1, 128), logits="all").logits.float()
    err, bad_err = (got - ref).abs().mean().item(), (bad - ref).abs().mean().item()
    assert agree >= 0.9, agree
    assert bad_err > 2 * err


def _tiny(seed: int = 0, intermediate: int = 160):
    from transformers import LlamaConfig

    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer

    torch.manual_seed(seed)
    hf = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return Transformer(ModelConfig.from_hf(hf.to_dict())).eval()


def _linears(m):
    from lmlab.core.model import Linear

    return {n: x.dense_weight().detach().clone() for n, x in m.named_modules() if isinstance(x, Linear)}


def test_group_quantization_rounds_to_codes_idempotently():
    """q8 / q4 write the dequantized group codes into the weights: rounding again changes nothing, every weight moves
    by at most one quantization step of its group, and q4 moves the projections more than q8 does."""
    from lmlab.core.quant import quantize_groups

    ref = _linears(_tiny())
    moved = {}
    for scheme in ("q8", "q4"):
        m = quantize_groups(_tiny(), scheme)
        once = _linears(m)
        quantize_groups(m, scheme)
        twice = _linears(m)
        for n in ref:
            g = ref[n].view(ref[n].shape[0], -1, 32)
            step = (g.amax(-1) - g.amin(-1)) / (15 if scheme == "q4" and n != "lm_head" else 127)
            err = (once[n] - ref[n]).view_as(g).abs()
            assert (err <= step[..., None] * 1.01 + 1e-6).all(), (scheme, n)
            assert torch.allclose(once[n], twice[n], atol=1e-6), (scheme, n)  # idempotent: the codes round-trip
        moved[scheme] = max(float((once[n] - ref[n]).abs().max()) for n in ref if n != "lm_head")
    assert moved["q4"] > 4 * moved["q8"] > 0


def test_group_quantization_same_numbers_with_and_without_kernels(monkeypatch):
    """The packed kernels compute the quantized model's own numbers: their logits match fp32 F.linear over the
    dequantized weights (the LMLAB_KERNELS=0 / CUDA path of the same mode) up to summation order."""
    from lmlab.core import kernels
    from lmlab.core.quant import quantize_groups

    ids = torch.randint(0, 300, (2, 9))
    m, plain, fp = quantize_groups(_tiny(), "q4"), _tiny(), _tiny()
    with torch.inference_mode():
        got = m(ids, m.new_cache(2, 16), logits="all").logits
        monkeypatch.setattr(kernels, "enabled", lambda: False)
        monkeypatch.setattr(kernels, "usable", lambda *a, **k: False)
        monkeypatch.setattr(kernels, "attention_ok", lambda *a, **k: False)
        quantize_groups(plain, "q4")
        assert not hasattr(plain, "block_packs")
        ref = plain(ids, plain.new_cache(2, 16), logits="all").logits
        far = fp(ids, fp.new_cache(2, 16), logits="all").logits
    assert (got - ref).abs().max() < 1e-4
    assert (far - ref).abs().max() > 100 * (got - ref).abs().max()  # control: the float model is another model


def test_group_quantization_refuses_odd_sizes_and_bf16_activations():
    import pytest

    from lmlab.core.errors import LmlabError
    from lmlab.core.quant import quantize_groups

    with pytest.raises(LmlabError, match="divisible by 32"):
        quantize_groups(_tiny(intermediate=150), "q8")
    with pytest.raises(LmlabError, match="fp32 activations"):
        load_model("smollm2-135m-instruct", dtype=torch.bfloat16, quant="q4", cache=False)


def test_q4_is_the_embedded_files_own_model(smollm):
    """The embedded SmolLM2 is a Q4_1 / Q8_0 GGUF file: `--quant q4` rounds its weights to their own codes, so the
    q4 model has exactly the float model's weights and decodes the same greedy text."""
    from lmlab.core.engine import SamplingParams, encode_chat, generate

    q = load_model("smollm2-135m-instruct", dtype="auto", quant="q4", cache=False)
    ref = _linears(smollm.model)
    assert all(torch.equal(w, ref[n]) for n, w in _linears(q.model).items())
    p = [encode_chat(smollm.tokenizer, [{"role": "user", "content": "Name three colours."}])]
    sp = SamplingParams(max_new_tokens=16)
    assert generate(q.model, q.tokenizer, p, sp) == generate(smollm.model, smollm.tokenizer, p, sp)


def test_int8_fp32_activations_never_take_torchs_fp32_int8_kernel(monkeypatch):
    """fp32 activations over MAX_ROWS rows (a mixed-length batch's padded prefill) run through lmlab's kernel in pieces,
    each row with the bits it has alone; with the kernels off they take the float GEMM on the dequantized weight. Never
    torch's `_weight_int8pack_mm` with fp32 activations: 27-60x slower there, it made batch-8 `--quant int8 --dtype
    float32` decoding slower than batch 1. bf16 activations keep torch's int8 kernel (the control: the spy sees it)."""
    from lmlab.core import kernels

    calls = []
    real = torch.ops.aten._weight_int8pack_mm
    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm", lambda *a: calls.append(1) or real(*a))
    lin = nn.Linear(64, 48, bias=True)
    q = Int8Linear(lin, torch.float32)
    x = torch.randn(2, kernels.MAX_ROWS // 2 + 3, 64)
    deq = q.weight.float() * q.scales[:, None]
    with torch.inference_mode():
        got = q(x)
        if kernels.enabled():
            alone = torch.stack([torch.stack([q(r[None])[0] for r in b]) for b in x])
            assert torch.equal(got, alone)
        monkeypatch.setattr(kernels, "enabled", lambda: False)
        off = q(x)
    assert not calls
    assert torch.allclose(got, x @ deq.T + q.bias, atol=1e-5, rtol=1e-5)
    assert torch.allclose(off, x @ deq.T + q.bias, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        Int8Linear(lin, torch.bfloat16)(x)
    assert calls


def test_group_quantization_keeps_only_codes_where_the_kernels_stream(monkeypatch):
    """With the kernels, q4 drops each projection's float weight once packed: the weight is None (a stray read fails,
    the control below), the codes are what the layer streams, and the logits equal those of the same model that kept
    its rounded float weights, at decoding rows and past the kernel's row limit (the padded prefill, which runs
    F.linear on the dequantized codes). The LM head keeps its float weight (tied, it is the embedding)."""
    import pytest

    from lmlab.core import kernels
    from lmlab.core.model import Linear
    from lmlab.core.quant import quantize_groups

    if not kernels.enabled():
        pytest.skip("lmlab's kernels are not built here (LMLAB_KERNELS=0 or no compiler): q4 keeps float weights")
    m = quantize_groups(_tiny(), "q4")
    lins = [x for x in m.layers.modules() if isinstance(x, Linear)]
    assert all(x.weight is None and x.codes[0] == kernels.Q4 and x._packed() is x.codes[1] for x in lins)
    assert m.lm_head.codes is None and m.lm_head.pack_dtype == kernels.Q8
    with torch.inference_mode():
        short, long = torch.randint(0, 300, (2, 9)), torch.randint(0, 300, (2, kernels.MAX_ROWS))
        got = [m(ids, m.new_cache(2, ids.shape[1]), logits="all").logits for ids in (short, long)]
        monkeypatch.setattr(kernels, "enabled", lambda: False)
        monkeypatch.setattr(kernels, "usable", lambda *a, **k: False)
        monkeypatch.setattr(kernels, "attention_ok", lambda *a, **k: False)
        kept = quantize_groups(_tiny(), "q4")
        assert all(x.weight is not None and x.codes is None for x in kept.modules() if isinstance(x, Linear))
        ref = [kept(ids, kept.new_cache(2, ids.shape[1]), logits="all").logits for ids in (short, long)]
        assert all((g - r).abs().max() < 1e-4 for g, r in zip(got, ref))
        with pytest.raises(TypeError):  # control: the dropped weight is not there to be read by mistake
            torch.nn.functional.linear(torch.randn(1, 64), m.layers[0].attn.wqkv.weight)


def test_row_tiled_rounding_equals_one_call():
    """quantize_groups packs a weight in row tiles (bounding the transient copies): the codes and the rounded weight
    equal those of one call, also with a last tile that is not full."""
    from lmlab.core import kernels
    from lmlab.core.quant import _PACK, _round_in_tiles

    w = torch.randn(64 * 5 + 17, 96)
    for scheme in (kernels.Q4, kernels.Q8):
        pack, unpack = _PACK[scheme]
        out = torch.empty_like(w)
        tiled, whole = _round_in_tiles(w, scheme, out=out, rows=128), pack(w)
        assert all(torch.equal(a, b) for a, b in zip(tiled, whole))
        assert torch.equal(out, unpack(*whole, w.shape[0]))


def test_quantized_models_do_not_hold_the_checkpoint_mapping(tmp_path):
    """A checkpoint loads as views of its memory-mapped file; a quantized model copies the float tensors it keeps, so
    the mapping (with every page read, ~400 MB for SmolLM2-135M) is released. Checked in a fresh process through
    /proc/self/maps (Linux); the control: the fp32 model does map the file."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    code = (
        "import sys, torch; from lmlab.core.loader import load_model\n"
        "q = None if sys.argv[1] == 'none' else sys.argv[1]\n"
        "lm = load_model('smollm2-135m-instruct', dtype=sys.argv[2], quant=q)\n"
        "print(sum('.safetensors' in l for l in open('/proc/self/maps')))\n"
    )
    maps = {
        (q, dt): int(
            subprocess.run(
                [sys.executable, "-c", code, q, dt], capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        )
        for q, dt in [("none", "float32"), ("q4", "float32"), ("int8", "float32")]
    }
    assert maps[("none", "float32")] > 0, maps  # control
    assert maps[("int8", "float32")] == 0, maps
    from lmlab.core import kernels

    if kernels.enabled():  # without the kernels q4 keeps its rounded float weights (in the mapping's private pages)
        assert maps[("q4", "float32")] == 0, maps
