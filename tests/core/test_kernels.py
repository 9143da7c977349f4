"""lmlab's CPU decoding kernels: the same numbers as the reference ops, and the same bits whatever the batch.

Bit-identity is the point: a k-token verification pass must give each token exactly the logits a 1-token
step gives it, or greedy speculative decoding can flip a near-tied choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from lmlab.core import kernels
from lmlab.core.config import ModelConfig
from lmlab.core.model import Linear, Transformer

pytestmark = pytest.mark.skipif(
    not kernels.enabled(),
    reason="lmlab kernels are off (LMLAB_KERNELS=0, no C++ toolchain, or a CPU without AVX2+FMA, AVX-512 or NEON)",
)


@pytest.mark.parametrize("n,k,bias", [(960, 576, False), (131, 40, True), (64, 17, True), (5, 1536, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_matches_reference_and_is_row_invariant(n, k, bias, dtype):
    g = torch.Generator().manual_seed(n + k)
    w, x = torch.randn(n, k, generator=g), torch.randn(9, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    y = kernels.packed_linear(x, kernels.pack(w, dtype), n, b)
    ref = x.double() @ w.to(dtype).double().T + (0 if b is None else b.double())
    assert torch.allclose(y.double(), ref, atol=1e-4 * k**0.5, rtol=0)
    for m in range(1, 10):  # every row alone and in every block size: the same bits
        assert torch.equal(kernels.packed_linear(x[:m], kernels.pack(w, dtype), n, b), y[:m])
        assert torch.equal(kernels.packed_linear(x[m - 1 : m], kernels.pack(w, dtype), n, b)[0], y[m - 1])


def test_attention_matches_sdpa_and_depends_only_on_visible_keys():
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, S, D = 2, 6, 2, 5, 40, 32
    q, kc, vc = (
        torch.randn(B, H, T, D, generator=g),
        torch.randn(B, Hkv, S, D, generator=g),
        torch.randn(B, Hkv, S, D, generator=g),
    )
    vis = torch.rand(B, T, 30, generator=g) < 0.6
    vis[..., 0] = True
    y = kernels.attention(q, kc, vc, vis, D**-0.5)
    ref = F.scaled_dot_product_attention(q, kc[:, :, :30], vc[:, :, :30], attn_mask=vis[:, None], enable_gqa=True)
    assert torch.allclose(y, ref, atol=1e-5)
    # query (0, 0) alone, over a wider key window whose extra keys it does not see: identical bits
    wide = torch.zeros(1, 1, S, dtype=torch.bool)
    wide[0, 0, :30] = vis[0, 0]
    alone = kernels.attention(q[:1, :, :1], kc[:1], vc[:1], wide, D**-0.5)
    assert torch.equal(alone[0, :, 0], y[0, :, 0])


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_hf(
        LlamaConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        ).to_dict()
    )
    return Transformer(cfg).eval()


def test_block_and_tree_passes_equal_single_steps_bit_for_bit():
    m = tiny_model()
    prompt, new = torch.randint(0, 300, (1, 23)), torch.randint(0, 300, (1, 6))
    with torch.inference_mode():
        c = m.new_cache(1, 64)
        m(prompt, c)
        steps = [m(new[:, i : i + 1], c).logits for i in range(6)]
        c = m.new_cache(1, 64)
        m(prompt, c)
        block = m(new, c, logits="all").logits
        c = m.new_cache(1, 64)
        m(prompt, c)
        # a tree whose nodes 0-2-4 form the real path; 1, 3, 5 are siblings with other tokens
        tree_tok = torch.stack([new[0, 0], new[0, 5], new[0, 1], new[0, 3], new[0, 2], new[0, 4]])[None]
        parent = [-1, -1, 0, 0, 2, 2]
        tm = torch.eye(6, dtype=torch.bool)
        for i, p in enumerate(parent):
            if p >= 0:
                tm[i] |= tm[p]
        depth = tm.sum(-1) - 1
        tree = m(tree_tok, c, logits="all", tree_mask=tm[None], positions=(23 + depth)[None]).logits
    for i in range(6):
        assert torch.equal(block[:, i], steps[i])
    for node, step in [(0, 0), (2, 1), (4, 2)]:
        assert torch.equal(tree[:, node], steps[step])


def test_repacks_after_the_weight_changes_and_bf16_weights():
    lin = Linear(32, 48)
    x = torch.randn(3, 32)
    with torch.inference_mode():
        a = lin(x)
    with torch.no_grad():
        lin.weight.mul_(2)
    with torch.inference_mode():
        b = lin(x)
    assert torch.allclose(b - lin.bias, 2 * (a - lin.bias), atol=1e-5)
    m = tiny_model()
    m.set_weight_dtype(torch.bfloat16)
    assert torch.equal(m.lm_head.weight, m.lm_head.weight.bfloat16().float())  # every path sees bf16 values
    ids = torch.randint(0, 300, (1, 200))
    with torch.inference_mode():  # 200 rows: past the kernel's row limit, so F.linear on the rounded weights
        full = m(ids, m.new_cache(1, 256), logits="all").logits
        c = m.new_cache(1, 256)
        m(ids[:, :199], c)
        last = m(ids[:, 199:], c).logits  # kernel path, bf16-packed weights
    assert torch.allclose(last, full[:, -1], atol=1e-4)


def test_training_bypasses_the_kernel():
    lin = Linear(16, 8)
    x = torch.randn(2, 16, requires_grad=True)
    lin(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_rms_norm_matches_torch():
    x, w = torch.randn(7, 100), torch.randn(100)
    assert torch.allclose(kernels.rms_norm(x, w, 1e-5), F.rms_norm(x, (100,), w, 1e-5), atol=1e-5)
    assert torch.equal(kernels.rms_norm(x[3:4], w, 1e-5), kernels.rms_norm(x, w, 1e-5)[3:4])


def test_chunked_prefill_equals_stepwise_decoding_bit_for_bit(monkeypatch):
    """A long prompt is prefilled in kernel-sized pieces; the pieces leave exactly the cache and logits that
    decoding the prompt token by token would (so prefill and decode can never disagree)."""
    from lmlab.core.engine import chunked_forward

    monkeypatch.setattr(kernels, "MAX_ROWS", 8)  # 30 tokens -> pieces of 8, 8, 8, 6
    m = tiny_model()
    ids = torch.randint(0, 300, (1, 30))
    calls = []
    monkeypatch.setattr(m, "forward", lambda *a, _f=m.forward, **k: calls.append(a[0].shape[1]) or _f(*a, **k))
    with torch.inference_mode():
        c1 = m.new_cache(1, 32)
        out = chunked_forward(m, ids, c1, logits="all", output_hidden_states=True)
        assert calls == [8, 8, 8, 6]
        c2 = m.new_cache(1, 32)
        steps = torch.cat([m(ids[:, i : i + 1], c2, logits="all").logits for i in range(30)], 1)
    assert torch.equal(out.logits, steps)
    assert all(torch.equal(a[:, :, :30], b[:, :, :30]) for a, b in zip(c1.k + c1.v, c2.k + c2.v))
    assert (
        out.last_hidden.shape == (1, 30, 64)
        and len(out.hidden_states) == 4
        and out.hidden_states[0].shape == (1, 30, 64)
    )


@pytest.mark.parametrize("n,k", [(960, 576), (131, 64), (5, 1536)])
def test_q4_packing_round_trips_and_kernel_matches_its_weights(n, k):
    """4-bit drafts: packing dequantized Q4_1-style weights gives back the same codes (a GGUF Q4_1 checkpoint keeps
    its own codes), and the kernel computes x . W^T for exactly the weights the codes stand for."""
    g = torch.Generator().manual_seed(n)
    w, x = torch.randn(n, k, generator=g), torch.randn(6, k, generator=g)
    codes, dm = kernels.pack_q4(w)
    wq = kernels.dequant_q4(codes, dm, n)
    assert 0.05 < ((wq - w).norm() / w.norm()).item() < 0.1  # a real 4-bit approximation, not a copy
    c2, d2 = kernels.pack_q4(wq)
    assert torch.equal(c2, codes) and torch.equal(d2, dm)
    y = kernels.packed_linear_q4(x, (codes, dm), n, None)
    ref = x.double() @ wq.double().T
    assert torch.allclose(y.double(), ref, atol=1e-4 * k**0.5, rtol=0)
    with pytest.raises(ValueError, match="divisible by 32"):
        kernels.pack_q4(torch.randn(4, 40))


@pytest.mark.parametrize("n,k", [(960, 576), (131, 64), (200, 1536)])
def test_q4_kernel_is_row_invariant_on_fp32_activations(n, k):
    """The fp32-activation 4-bit kernel (`--quant q4`) gives every row the bits it has alone, at every row count (one
    row tile and several, a partial last tile), bias or not, and those are x . W^T for the codes' weights: what keeps
    greedy speculative decoding of a q4 target lossless."""
    g = torch.Generator().manual_seed(k)
    w, x, b = torch.randn(n, k, generator=g), torch.randn(11, k, generator=g), torch.randn(n, generator=g)
    packed = kernels.pack_q4(w)
    for bias in (None, b):
        alone = torch.cat([kernels.packed_linear_q4(x[i : i + 1], packed, n, bias) for i in range(11)])
        ref = x.double() @ kernels.dequant_q4(*packed, n).double().T + (0 if bias is None else bias.double())
        assert torch.allclose(alone.double(), ref, atol=1e-4 * k**0.5, rtol=0)
        for m in range(2, 12):
            assert torch.equal(kernels.packed_linear_q4(x[:m], packed, n, bias), alone[:m]), (m, bias is None)


@pytest.mark.parametrize("n,k,rows", [(960, 576, 1), (131, 64, 3), (3072, 576, 5)])
def test_q4_kernel_on_8_bit_activations_is_its_formula_and_row_invariant(n, k, rows):
    """The drafts' 4-bit kernel with act8 (inputs rounded to 8 bits per group of 32, integer dot products): equal, up
    to float rounding, to its formula computed here in float64 (w = d (q - 8) + (m + 8 d); the data term on the
    rounded inputs, the offset term on the true sums); each row gives the same bits alone or with others; and it is
    an approximation of the fp32-input kernel, not the same numbers (the control)."""
    g = torch.Generator().manual_seed(n)
    w, x = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g)
    x[0, :32] = 0.0  # an all-zero group (scale 0)
    b = torch.randn(n, generator=g)
    packed = kernels.pack_q4(w)
    y = kernels.packed_linear_q4(x, packed, n, b, True)
    grp = x.double().view(rows, k // 32, 32)
    amax = grp.abs().amax(-1, keepdim=True)
    xe = torch.where(amax > 0, torch.round(grp * (127 / amax)) * (amax.float() / 127).double(), 0.0).view(rows, k)
    dm = packed[1].double()  # [blocks, K/32, 2, 64]
    d, m = (dm[:, :, i].permute(0, 2, 1).reshape(-1, k // 32)[:n] for i in (0, 1))
    off = m + 8 * d
    wc = kernels.dequant_q4(*packed, n).double() - off.repeat_interleave(32, 1)
    ref = xe @ wc.T + grp.sum(-1) @ off.T + b.double()
    assert torch.allclose(y.double(), ref, atol=1e-5 * k**0.5, rtol=0)
    for i in range(rows):
        assert torch.equal(kernels.packed_linear_q4(x[i : i + 1], packed, n, b, True), y[i : i + 1])
    exact = kernels.packed_linear_q4(x, packed, n, b)
    assert 1e-3 < ((y - exact).norm() / exact.norm()).item() < 2e-2


def test_q8_packing_and_kernel():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(200, 96, generator=g), torch.randn(5, 96, generator=g)
    q, d = kernels.pack_q8(w)
    wq = (q.float() * d.float().repeat_interleave(32, 1)).transpose(1, 2).reshape(-1, 96)[:200]
    assert 0 < ((wq - w).norm() / w.norm()).item() < 0.01  # 8 bits per weight: a close approximation
    y = kernels.packed_linear_q8(x, (q, d), 200)
    assert torch.allclose(y.double(), x.double() @ wq.double().T, atol=1e-4, rtol=0)


def test_fused_blocks_give_the_unfused_bits(monkeypatch):
    """Whole decoder blocks in one kernel call (`decoder_block`) are the same ops in the same order: prefill, single
    steps and a block pass give exactly the logits of the per-op path (LMLAB_FUSED=0)."""
    m = tiny_model()
    ids = torch.randint(0, 300, (1, 40))

    def run(fused: str):
        monkeypatch.setenv("LMLAB_FUSED", fused)
        c = m.new_cache(1, 48)
        with torch.inference_mode():
            a = m(ids[:, :30], c, logits="all").logits
            b = [m(ids[:, i : i + 1], c).logits for i in range(30, 34)]
            return a, b, m(ids[:, 34:40], c, logits="all").logits

    calls = []
    real = kernels.decoder_block
    monkeypatch.setattr(kernels, "decoder_block", lambda *a: calls.append(1) or real(*a))
    fused, plain = run("1"), run("0")
    assert calls, "the fused path must have run"
    assert (
        torch.equal(fused[0], plain[0])
        and all(torch.equal(x, y) for x, y in zip(fused[1], plain[1]))
        and torch.equal(fused[2], plain[2])
    )


def test_int8_weights_with_fp32_activations_fuse_and_stay_batch_invariant(monkeypatch):
    """`--quant int8 --dtype float32`: the blocks take the fused kernel path with Int8Linear layers (this read
    `pack_dtype` on an Int8Linear and raised AttributeError), every output matches torch's own int8 kernel, and a block
    pass gives the bits of single steps, as for fp32 weights."""
    from lmlab.core.quant import Int8Linear, quantize_int8

    m = quantize_int8(tiny_model(), torch.float32)
    calls = []
    real = kernels.decoder_block
    monkeypatch.setattr(kernels, "decoder_block", lambda *a: calls.append(1) or real(*a))
    ids = torch.randint(0, 300, (1, 26))
    with torch.inference_mode():
        c = m.new_cache(1, 32)
        m(ids[:, :20], c)
        steps = [m(ids[:, i : i + 1], c).logits for i in range(20, 26)]
        c = m.new_cache(1, 32)
        m(ids[:, :20], c)
        block = m(ids[:, 20:], c, logits="all").logits
    assert calls, "the fused path must have run"
    assert all(torch.equal(block[:, i], s) for i, s in enumerate(steps))
    lin = m.layers[0].mlp.w13
    assert isinstance(lin, Int8Linear)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        ref = torch.ops.aten._weight_int8pack_mm(x, lin.weight, lin.scales)  # torch's int8 kernel (no bias here)
        assert torch.allclose(lin(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_dense_kernel_does_not_depend_on_rows_threads_or_tiles(dtype):
    """The same bits for a row whatever the other rows, the row count (every tile shape: 1-4 rows, tails) and the
    number of threads; K not a multiple of the vector width exercises the zero-padded tail."""
    g = torch.Generator().manual_seed(3)
    n, k = 37, 99
    w = torch.randn(n, k, generator=g)
    scale = torch.rand(n, generator=g) if dtype == torch.int8 else None
    packed = (w * 20).round().clamp(-127, 127).to(torch.int8) if dtype == torch.int8 else kernels.pack(w, dtype)
    x = torch.randn(11, k, generator=g)
    full = kernels.packed_linear(x, packed, n, None, scale)
    threads = torch.get_num_threads()
    try:
        for t in {1, threads}:
            torch.set_num_threads(t)
            for m in range(1, 12):
                assert torch.equal(kernels.packed_linear(x[:m], packed, n, None, scale), full[:m])
                assert torch.equal(kernels.packed_linear(x[m - 1 : m], packed, n, None, scale)[0], full[m - 1])
    finally:
        torch.set_num_threads(threads)
    ref = x.double() @ packed.double().T * (1 if scale is None else scale.double())
    assert torch.allclose(full.double(), ref, atol=1e-4 * k**0.5 * (20 if scale is not None else 1), rtol=1e-6)


def test_the_build_targets_this_cpu():
    """The build reports a vector ISA that this CPU has (a cache built elsewhere is never loaded: its tag names the
    host's feature flags)."""
    name = kernels.isa()
    flags = kernels._host()
    if name.startswith("avx512"):
        assert "avx512f" in flags
    elif name.startswith("avx2"):
        assert "avx2" in flags and "fma" in flags
    else:
        assert name.startswith("neon") and kernels._host().split(":")[0] in ("arm64", "aarch64")


def test_draft_blocks_compute_the_same_model(monkeypatch):
    """A 4-bit draft's blocks (`draft_block`: RoPE, SwiGLU and residuals as plain loops) compute the per-op path's
    numbers up to rounding (a sign slip in its SiLU once cut selfq4's acceptance from > 0.95 to 0.38)."""
    m = tiny_model()
    for mod in m.layers.modules():
        if isinstance(mod, Linear):
            mod.pack_dtype = kernels.Q4
    ids = torch.randint(0, 300, (1, 12))
    out = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("LMLAB_FUSED", fused)
        with torch.inference_mode():
            out[fused] = m(ids, m.new_cache(1, 16), logits="all").logits
    assert torch.allclose(out["1"], out["0"], atol=1e-4)
