"""A decoder LM with DeepSeekMoE FFNs: the native Llama-family model (attention, RoPE, RMSNorm, KV cache)
with `MoE` in every layer from `first_dense` on, as in DeepSeekMoE 2B/16B (MHA + MoE, first layer dense).

Checkpoints use the DeepSeekMoE Hugging Face layout (`model_type: deepseek`, as deepseek-moe-16b-base):
`mlp.gate.weight`, `mlp.shared_experts.{gate,up,down}_proj`, and routed experts either per expert
(`mlp.experts.{j}.{gate,up,down}_proj.weight`, the hub format) or fused 3-D
(`mlp.experts.gate_up_proj` [E, 2I, H] / `mlp.experts.down_proj` [E, H, I], transformers 5's layout).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.config import ModelConfig
from ..core.errors import LmlabError
from ..core.loader import SafetensorsDir, shared_to_hf
from ..core.model import Transformer
from ..core.paths import atomic_dir
from .layer import MoE, MoEConfig, RouterStats


class MoETransformer(Transformer):
    """core.model.Transformer whose FFNs from layer `first_dense` on are `MoE` layers.

    Generation, KV cache and hooks are the core model's; `aux_loss()` sums the layers' balance losses of
    the last forward and `router_stats()` returns their `RouterStats`.
    """

    def __init__(self, cfg: ModelConfig, moe: MoEConfig, first_dense: int = 0):
        super().__init__(cfg)
        self.moe_cfg, self.first_dense = moe, first_dense
        for layer in self.layers[first_dense:]:
            layer.mlp = MoE(moe)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> MoETransformer:
        """GPT-2-style init for training from scratch: N(0, std), residual outputs scaled by 1/sqrt(2L).

        With `seed`, every parameter draws from its own generator seeded by (seed, parameter name): models
        that differ only in their FFNs (Dense, GShard, DeepSeekMoE) then start from the *same* embeddings,
        attention and norms for one seed (common random numbers), so a comparison paired by seed measures
        the FFN and not the luck of the attention init. Without it, the global torch RNG is used.
        """
        out_std = std / (2 * len(self.layers)) ** 0.5
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            residual_out = name.endswith(("wo.weight", "w2.weight", ".w2"))
            g = None
            if seed is not None:
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.copy_(noise * (out_std if residual_out else std))
        return self

    def moe_layers(self) -> list[MoE]:
        return [l.mlp for l in self.layers if isinstance(l.mlp, MoE)]

    def aux_loss(self) -> Tensor:
        losses = [m.aux_loss for m in self.moe_layers()]
        return torch.stack(losses).sum() if losses else torch.zeros((), device=self.device)

    def router_stats(self) -> list[RouterStats | None]:
        return [m.stats for m in self.moe_layers()]

    def logits(self, input_ids: Tensor) -> Tensor:
        """All-position logits of a full sequence (training / evaluation; a fresh cache per call)."""
        cache = self.new_cache(input_ids.shape[0], input_ids.shape[1])
        return self.forward(input_ids, cache, logits="all").logits

    def param_counts(self) -> dict[str, int]:
        """Total and per-token activated parameters (embeddings included once, as the paper counts)."""
        total = sum(p.numel() for p in self.parameters())
        tot_ffn, act_ffn = self.moe_cfg.params()
        inactive = (tot_ffn - act_ffn) * len(self.moe_layers())
        return {"total_params": total, "activated_params": total - inactive}

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: 2 x activated non-embedding matmul params + attention scores (Kaplan et al.)."""
        cfg = self.cfg
        lookup = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size  # the embedding is a lookup
        attn = 2 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim  # QK^T and AV, causal average
        return 2 * (self.param_counts()["activated_params"] - lookup) + attn


# ------------------------------------------------------------------------------------------ HF format
def config_from_hf(d: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, MoEConfig, int]:
    """Read a DeepSeekMoE (model_type deepseek) or DeepSeek-V2-style MoE config dict."""
    try:
        base = ModelConfig.from_hf(
            {
                **d,
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "tie_word_embeddings": d.get("tie_word_embeddings", False),
            },
            source,
        )
        moe = MoEConfig(
            hidden_size=d["hidden_size"],
            expert_size=d["moe_intermediate_size"],
            n_routed=d["n_routed_experts"],
            top_k=d["num_experts_per_tok"],
            n_shared=d.get("n_shared_experts") or 0,
            norm_topk=bool(d.get("norm_topk_prob", False)),
            routed_scale=float(d.get("routed_scaling_factor", 1.0)),
            scoring=d.get("scoring_func", "softmax"),
            alpha1=float(d.get("aux_loss_alpha", 0.0)),
        )
    except KeyError as e:
        raise LmlabError(f"{source}: missing field {e.args[0]!r}", hint="is this a DeepSeekMoE config.json?") from None
    if d.get("moe_layer_freq", 1) != 1:
        raise LmlabError(
            f"{source}: moe_layer_freq={d['moe_layer_freq']} unsupported",
            hint="only every layer after first_k_dense_replace is MoE",
        )
    if d.get("topk_method", "greedy") != "greedy":
        raise LmlabError(f"{source}: topk_method={d['topk_method']!r} unsupported", hint="only greedy top-k routing")
    return replace(base, extra={}), moe, int(d.get("first_k_dense_replace", 0))


def config_to_hf(model: MoETransformer) -> dict[str, Any]:
    m = model.moe_cfg
    out = model.cfg.to_hf()
    out.update(
        architectures=["DeepseekForCausalLM"],
        model_type="deepseek",
        moe_intermediate_size=m.expert_size,
        n_routed_experts=m.n_routed,
        n_shared_experts=m.n_shared,
        num_experts_per_tok=m.top_k,
        first_k_dense_replace=model.first_dense,
        moe_layer_freq=1,
        norm_topk_prob=m.norm_topk,
        routed_scaling_factor=m.routed_scale,
        scoring_func=m.scoring,
        aux_loss_alpha=m.alpha1,
        topk_method="greedy",
        lmlab_moe=m.asdict(),
    )
    return out


def _attention_keys(sd: dict[str, Tensor], cfg: ModelConfig, i: int) -> dict[str, Tensor]:
    p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
    out = {
        f"layers.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
        f"layers.{i}.mlp_norm.weight": sd[p + "post_attention_layernorm.weight"],
        f"layers.{i}.attn.wqkv.weight": torch.cat([sd[a + f"{x}_proj.weight"] for x in "qkv"]),
        f"layers.{i}.attn.wo.weight": sd[a + "o_proj.weight"],
    }
    if cfg.attention_bias:
        out[f"layers.{i}.attn.wqkv.bias"] = torch.cat([sd[a + f"{x}_proj.bias"] for x in "qkv"])
    return out


def _routed_from_hf(sd: dict[str, Tensor], m: str, n: int) -> tuple[Tensor, Tensor]:
    """(w13 [E, H, 2I], w2 [E, I, H]) from fused or per-expert HF tensors."""
    if m + "experts.gate_up_proj" in sd:
        return sd[m + "experts.gate_up_proj"].transpose(1, 2), sd[m + "experts.down_proj"].transpose(1, 2)
    e = lambda j, x: sd[f"{m}experts.{j}.{x}_proj.weight"]  # noqa: E731
    w13 = torch.stack([torch.cat([e(j, "gate"), e(j, "up")]).t() for j in range(n)])
    return w13, torch.stack([e(j, "down").t() for j in range(n)])


def hf_to_native(sd: dict[str, Tensor], cfg: ModelConfig, moe: MoEConfig, first_dense: int) -> dict[str, Tensor]:
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    try:
        for i in range(cfg.num_layers):
            out.update(_attention_keys(sd, cfg, i))
            m, n = f"model.layers.{i}.mlp.", f"layers.{i}.mlp."
            if i < first_dense:
                out[n + "w13.weight"] = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]])
                out[n + "w2.weight"] = sd[m + "down_proj.weight"]
                continue
            out[n + "router.weight"] = sd[m + "gate.weight"]
            if m + "gate.e_score_correction_bias" in sd:
                out[n + "router.bias"] = sd[m + "gate.e_score_correction_bias"]
            out[n + "w13"], out[n + "w2"] = _routed_from_hf(sd, m, moe.n_routed)
            if moe.shared_width:
                s = m + "shared_experts."
                out[n + "shared.w13.weight"] = torch.cat([sd[s + "gate_proj.weight"], sd[s + "up_proj.weight"]])
                out[n + "shared.w2.weight"] = sd[s + "down_proj.weight"]
    except KeyError as e:
        raise LmlabError(
            f"checkpoint lacks tensor {e.args[0]!r}", hint="is it a DeepSeekMoE-style checkpoint?"
        ) from None
    return {k: v.contiguous() for k, v in out.items()}


def native_to_hf(model: MoETransformer) -> dict[str, Tensor]:
    """Hub layout (per-expert tensors), the inverse of `hf_to_native`."""
    cfg, sd = model.cfg, model.state_dict()
    out = shared_to_hf(sd, cfg)
    for i, layer in enumerate(model.layers):
        p, n = f"model.layers.{i}.", f"layers.{i}."
        mlps = (
            [("mlp.", n + "mlp.")]
            if not isinstance(layer.mlp, MoE)
            else ([("mlp.shared_experts.", n + "mlp.shared.")] if layer.mlp.shared is not None else [])
        )
        for hf, nat in mlps:
            g, u = sd[nat + "w13.weight"].chunk(2)
            out[p + hf + "gate_proj.weight"], out[p + hf + "up_proj.weight"] = g, u
            out[p + hf + "down_proj.weight"] = sd[nat + "w2.weight"]
        if isinstance(layer.mlp, MoE) and layer.mlp.cfg.n_routed:
            out[p + "mlp.gate.weight"] = sd[n + "mlp.router.weight"]
            for j in range(layer.mlp.cfg.n_routed):
                g, u = sd[n + "mlp.w13"][j].t().chunk(2)
                e = p + f"mlp.experts.{j}."
                out[e + "gate_proj.weight"], out[e + "up_proj.weight"] = g, u
                out[e + "down_proj.weight"] = sd[n + "mlp.w2"][j].t()
    return {k: v.contiguous() for k, v in out.items()}


def save_moe(model: MoETransformer, tokenizer: Any, path: str | Path) -> Path:
    """Write a DeepSeekMoE-layout HF checkpoint directory atomically (tmp dir + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(native_to_hf(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return path


def load_moe(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> MoETransformer:
    """Load a DeepSeekMoE-style checkpoint directory (config.json + safetensors)."""
    folder = Path(path)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise LmlabError(f"{folder}: no config.json", hint="pass a DeepSeekMoE-style Hugging Face checkpoint directory")
    try:
        d = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{cfg_path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    cfg, moe, first = config_from_hf(d, str(cfg_path))
    if "lmlab_moe" in d:  # our own checkpoints keep the full layer config (balance factors, capacity, ...)
        moe = MoEConfig(**d["lmlab_moe"])
    with torch.device("meta"):
        model = MoETransformer(cfg, moe, first)
    model = model.to_empty(device=device)
    sd = hf_to_native(SafetensorsDir(folder, torch.float32), cfg, moe, first)  # type: ignore[arg-type]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [
        k for k in missing if not k.endswith("router.bias") and not (cfg.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or unexpected:
        raise LmlabError(
            f"{folder}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for i, layer in enumerate(model.layers):  # the bias buffer is optional in checkpoints (V3 balancing only)
        if isinstance(layer.mlp, MoE) and moe.n_routed and f"layers.{i}.mlp.router.bias" not in sd:
            layer.mlp.router.bias.zero_()
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    from ..core.model import rope_inv_freq

    inv, model.rope_scale = rope_inv_freq(cfg)
    model.inv_freq = inv.to(device)
    return model.to(dtype).eval()


@torch.no_grad()
def from_hf_block(block: Any) -> MoE:
    """Our `MoE` holding the weights of a transformers `DeepseekV2Moe` block (greedy top-k, softmax gate)."""
    c = block.config
    if getattr(c, "topk_method", "greedy") != "greedy":
        raise LmlabError(f"topk_method={c.topk_method!r} unsupported", hint="only greedy top-k routing")
    moe = MoE(
        MoEConfig(
            hidden_size=c.hidden_size,
            expert_size=c.moe_intermediate_size,
            n_routed=c.n_routed_experts,
            top_k=c.num_experts_per_tok,
            n_shared=c.n_shared_experts or 0,
            routed_scale=float(c.routed_scaling_factor),
        )
    )
    moe.router.weight.copy_(block.gate.weight)
    moe.w13.copy_(block.experts.gate_up_proj.transpose(1, 2))
    moe.w2.copy_(block.experts.down_proj.transpose(1, 2))
    if moe.shared is not None:
        s = block.shared_experts
        moe.shared.w13.weight.copy_(torch.cat([s.gate_proj.weight, s.up_proj.weight]))
        moe.shared.w2.weight.copy_(s.down_proj.weight)
    return moe.to(block.experts.gate_up_proj.dtype)
