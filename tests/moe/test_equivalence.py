"""Equivalence with transformers: the DeepseekV2Moe block (all experts implementations) and a full decoder LM.

Tolerances: float32 throughout; our layer and HF's run the same matmuls but sum the k expert outputs in a
different order (index_add_ vs reshape-sum), so outputs agree to a few ulps of their magnitude (~1e-6);
we allow 1e-5 absolute on O(1) outputs and 1e-4 on logits after 3 layers.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import DeepseekV2Config, LlamaConfig, LlamaForCausalLM
from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe

from lmlab.core.errors import LmlabError
from lmlab.moe.model import from_hf_block, load_moe, save_moe


def _hf_block(n_routed=15, n_shared=1, top_k=3, scale=1.0, hidden=64, inter=32) -> DeepseekV2Moe:
    cfg = DeepseekV2Config(
        hidden_size=hidden,
        moe_intermediate_size=inter,
        n_routed_experts=n_routed,
        n_shared_experts=n_shared,
        num_experts_per_tok=top_k,
        topk_method="greedy",
        routed_scaling_factor=scale,
    )
    block = DeepseekV2Moe(cfg)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return block


@pytest.mark.parametrize("impl", ["eager", "grouped_mm", "batched_mm"])
@pytest.mark.parametrize("shape", [(15, 1, 3, 1.0), (8, 2, 2, 2.5)])
def test_block_forward_and_backward_match_hf(impl, shape):
    hf = _hf_block(*shape)
    hf.config._experts_implementation = impl
    ours = from_hf_block(hf)
    x = torch.randn(2, 37, 64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 37, 64)
    y_hf, y = hf(x), ours(x2)
    assert torch.allclose(y, y_hf, atol=1e-5, rtol=0), (y - y_hf).abs().max()
    y_hf.backward(g)
    y.backward(g)
    assert torch.allclose(x2.grad, x.grad, atol=1e-5, rtol=0)
    assert torch.allclose(ours.w13.grad, hf.experts.gate_up_proj.grad.transpose(1, 2), atol=1e-5, rtol=0)
    assert torch.allclose(ours.w2.grad, hf.experts.down_proj.grad.transpose(1, 2), atol=1e-5, rtol=0)
    assert torch.allclose(ours.router.weight.grad, hf.gate.weight.grad, atol=1e-5, rtol=0)


def test_renormalised_gate_is_a_different_function():
    """Control: switching on top-k renormalisation (HF DeepSeek-V2 does not) must break equivalence."""
    hf = _hf_block()
    ours = from_hf_block(hf)
    ours.cfg.norm_topk = True
    x = torch.randn(1, 20, 64)
    assert not torch.allclose(ours(x), hf(x), atol=1e-3)


def _hybrid(tmp_path, per_expert: bool):
    """A DeepSeekMoE-16B-style LM built from transformers modules: Llama decoder (MHA/GQA + RoPE) with
    transformers' DeepseekV2Moe as FFN from layer `first_k_dense_replace` on; saved in the hub layout."""
    torch.manual_seed(0)
    lc = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        max_position_embeddings=64,
    )
    ref = LlamaForCausalLM(lc).eval()
    mc = DeepseekV2Config(
        hidden_size=64,
        moe_intermediate_size=24,
        n_routed_experts=12,
        n_shared_experts=2,
        num_experts_per_tok=4,
        topk_method="greedy",
        routed_scaling_factor=1.0,
    )
    for layer in ref.model.layers[1:]:
        layer.mlp = DeepseekV2Moe(mc)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if per_expert:
        for i in (1, 2):
            m = f"model.layers.{i}.mlp.experts."
            gu, dn = sd.pop(m + "gate_up_proj"), sd.pop(m + "down_proj")
            for j in range(12):
                sd[m + f"{j}.gate_proj.weight"], sd[m + f"{j}.up_proj.weight"] = gu[j].chunk(2)
                sd[m + f"{j}.down_proj.weight"] = dn[j]
            sd = {k: v.contiguous() for k, v in sd.items()}
    cfg = {
        **lc.to_dict(),
        "model_type": "deepseek",
        "architectures": ["DeepseekForCausalLM"],
        "moe_intermediate_size": 24,
        "n_routed_experts": 12,
        "n_shared_experts": 2,
        "num_experts_per_tok": 4,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "norm_topk_prob": False,
        "scoring_func": "softmax",
        "aux_loss_alpha": 0.001,
    }
    d = tmp_path / ("per_expert" if per_expert else "fused")
    d.mkdir()
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(cfg))
    return ref, d


@pytest.mark.parametrize("per_expert", [False, True])
def test_lm_loads_deepseek_checkpoint_and_matches_transformers_logits(tmp_path, per_expert):
    ref, path = _hybrid(tmp_path, per_expert)
    ours = load_moe(path)
    assert [type(l.mlp).__name__ for l in ours.layers] == ["MLP", "MoE", "MoE"]
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        want = ref(ids).logits
        got = ours.logits(ids)
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    # incremental decoding through the core KV cache gives the same last-token logits
    cache = ours.new_cache(2, 19)
    with torch.no_grad():
        ours(ids[:, :15], cache, logits="none")
        for t in range(15, 19):
            last = ours(ids[:, t : t + 1], cache).logits
    assert torch.allclose(last, want[:, -1], atol=1e-4, rtol=0)
    # save -> load round trip in the hub (per-expert) layout is exact
    again = load_moe(save_moe(ours, None, tmp_path / "round"))
    with torch.no_grad():
        assert torch.equal(again.logits(ids), got)


def test_mismatched_checkpoint_is_a_one_line_error(tmp_path):
    _, path = _hybrid(tmp_path, per_expert=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["n_routed_experts"] = 13  # the tensors hold 12
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlabError, match="experts.12"):
        load_moe(path)
    (path / "config.json").write_text("{bad")
    with pytest.raises(LmlabError, match="line 1"):
        load_moe(path)
