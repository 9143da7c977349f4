"""The native model against transformers on the same weights: logits, cache paths, batching, rollback."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from lmlab.core.loader import load_model

# fp32 on both sides; the native model fuses q/k/v and gate/up into single matmuls, which changes the
# summation order, so results differ by float rounding (~1e-6 relative per op, compounding over layers).
# 1e-4 absolute on logits of magnitude ~1 is two orders above that noise and far below any real bug
# (a wrong RoPE, mask or norm moves logits by >1e-2).
TOL = 1e-4

TINY = dict(
    vocab_size=211,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

CONFIGS = {
    "llama-default": lambda: LlamaConfig(**TINY, tie_word_embeddings=True),
    "llama-linear": lambda: LlamaConfig(**TINY, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "llama3-rope": lambda: LlamaConfig(
        **TINY,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "llama-yarn": lambda: LlamaConfig(
        **TINY, rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    ),
    "qwen2-bias-untied": lambda: Qwen2Config(**TINY, tie_word_embeddings=False),
    "mistral": lambda: MistralConfig(**{**TINY, "head_dim": 16}),
}


def make_hf(name: str, tmp_path):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
    with torch.no_grad():  # non-trivial norms and biases so that a skipped one would show
        for n, p in hf.named_parameters():
            if "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    return hf, load_model(str(tmp_path), cache=False).model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(name, tmp_path):
    hf, nat = make_hf(name, tmp_path)
    ids = torch.randint(0, 211, (2, 40))
    with torch.no_grad():
        ref = hf(ids).logits
        got = nat(ids, nat.new_cache(2, 64), logits="all").logits
    assert (got - ref).abs().max().item() < TOL


@pytest.mark.parametrize("name", ["llama-default", "qwen2-bias-untied"])
def test_incremental_decode_matches_full_forward(name, tmp_path):
    hf, nat = make_hf(name, tmp_path)
    ids = torch.randint(0, 211, (1, 30))
    with torch.no_grad():
        ref = hf(ids).logits[0]
        cache = nat.new_cache(1, 64)
        chunks = [nat(ids[:, :10], cache, logits="all").logits[0]]
        chunks.append(nat(ids[:, 10:17], cache, logits="all").logits[0])  # chunked prefill on a prefix
        for t in range(17, 30):
            chunks.append(nat(ids[:, t : t + 1], cache, logits="all").logits[0])
    assert (torch.cat(chunks) - ref).abs().max().item() < TOL


def test_batch_rows_of_different_lengths_match_hf_with_padding(tmp_path):
    hf, nat = make_hf("llama-default", tmp_path)
    lens = [5, 12, 9]
    seqs = [torch.randint(0, 211, (n,)) for n in lens]
    with torch.no_grad():
        cache = nat.new_cache(3, 32)
        padded = torch.zeros(3, 12, dtype=torch.long)
        for i, s in enumerate(seqs):
            padded[i, : len(s)] = s
        last = nat(padded, cache, num_tokens=lens).logits
        assert cache.lengths == lens
        nxt = torch.tensor([[7], [8], [9]])
        step = nat(nxt, cache).logits  # one decode step with per-row positions
        for i, s in enumerate(seqs):
            ref = hf(torch.cat([s, nxt[i]])[None]).logits[0]
            assert (last[i] - ref[-2]).abs().max() < TOL
            assert (step[i] - ref[-1]).abs().max() < TOL


def test_rollback_then_redecode_is_exact(tmp_path):
    _, nat = make_hf("llama-default", tmp_path)
    ids = torch.randint(0, 211, (1, 20))
    with torch.no_grad():
        cache = nat.new_cache(1, 64)
        nat(ids[:, :12], cache)
        a = nat(ids[:, 12:20], cache, logits="all").logits
        nat(torch.randint(0, 211, (1, 5)), cache)  # garbage appended, then rolled back
        cache.rollback(12)
        b = nat(ids[:, 12:20], cache, logits="all").logits
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        cache.rollback(100)


def test_tree_mask_matches_separate_branches(tmp_path):
    """Two branches verified in one pass with a tree mask equal each branch run on its own."""
    _, nat = make_hf("llama-default", tmp_path)
    prefix = torch.randint(0, 211, (1, 10))
    a, b = torch.tensor([[5, 6]]), torch.tensor([[7]])
    with torch.no_grad():
        cache = nat.new_cache(1, 32)
        nat(prefix, cache)
        # new tokens: a0 a1 b0 ; a1 sees a0 ; b0 sees only the prefix (and itself)
        tree = torch.tensor([[[1, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=torch.bool)
        pos = torch.tensor([[10, 11, 10]])
        got = nat(torch.cat([a, b], 1), cache, positions=pos, tree_mask=tree, logits="all").logits[0]
        refs = []
        for branch in (a, b):
            c = nat.new_cache(1, 32)
            nat(prefix, c)
            refs.append(nat(branch, c, logits="all").logits[0])
    assert (got - torch.cat(refs)).abs().max() < TOL
    # a wrong mask (b0 allowed to see a0) must change b0's logits: the control
    with torch.no_grad():
        cache.rollback(10)
        bad = tree.clone()
        bad[0, 2, 0] = True
        wrong = nat(torch.cat([a, b], 1), cache, positions=pos, tree_mask=bad, logits="all").logits[0]
    assert (wrong[2] - refs[1][0]).abs().max() > 1e-3


def test_key_bias_scales_attention_to_chosen_keys(tmp_path):
    """key_bias = log(w) on some key slots equals re-weighting those keys' attention (weighted ICL)."""
    _, nat = make_hf("llama-default", tmp_path)
    ids = torch.randint(0, 211, (1, 12))
    with torch.no_grad():
        c0 = nat.new_cache(1, 16)
        base = nat(ids, c0, logits="all").logits
        c1 = nat.new_cache(1, 16)
        c1.key_bias = torch.zeros(1, 16)
        zero = nat(ids, c1, logits="all").logits
        c2 = nat.new_cache(1, 16)
        c2.key_bias = torch.zeros(1, 16)
        c2.key_bias[0, 2:6] = torch.log(torch.tensor(0.2))
        biased = nat(ids, c2, logits="all").logits
    assert (zero - base).abs().max() < TOL  # zero bias = plain attention
    assert (biased[0, :2] - base[0, :2]).abs().max() < TOL  # queries before the biased keys are untouched
    assert (biased[0, 6:] - base[0, 6:]).abs().max() > 1e-3


def test_hidden_states_and_hooks_match_hf(tmp_path):
    hf, nat = make_hf("llama-default", tmp_path)
    ids = torch.randint(0, 211, (1, 9))
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True).hidden_states
        out = nat(ids, nat.new_cache(1, 16), output_hidden_states=True, logits="none")
        assert len(out.hidden_states) == len(ref) == 4
        for h, r in zip(out.hidden_states, ref):
            assert (h - r).abs().max() < TOL
        shift = torch.zeros(64)
        shift[0] = 5.0
        steered = nat(
            ids, nat.new_cache(1, 16), output_hidden_states=True, logits="none", hooks={0: lambda h: h + shift}
        )
        assert (steered.hidden_states[1] - out.hidden_states[1] - shift).abs().max() < 1e-5


@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm):
    """The embedded SmolLM2-135M (dequantized GGUF) against transformers on the same checkpoint."""
    hf = AutoModelForCausalLM.from_pretrained(str(smollm.path), dtype=torch.float32).eval()
    ids = torch.tensor([smollm.tokenizer("The quick brown fox jumps over the lazy dog. 12345 + 678 =").input_ids])
    with torch.no_grad():
        ref = hf(ids).logits
        got = smollm.model(ids, smollm.model.new_cache(1, 64), logits="all").logits
    diff = (got - ref).abs().max().item()
    print(f"SmolLM2-135M max |logit diff| = {diff:.2e} (logit scale {ref.abs().max().item():.1f})")
    assert diff < 1e-3  # 30 layers, logits up to ~30: same rounding argument as TOL, scaled
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
