"""Native Llama-family transformer (Llama, Mistral, Qwen2, SmolLM) with a preallocated KV cache.

One readable file in the spirit of nanoGPT / gpt-fast. Differences from transformers' implementation that
matter for speed: q/k/v and gate/up are fused into one matmul each, the KV cache is preallocated and
written in place, and the plain decode path builds no attention mask. Research hooks (per-layer hidden
states, residual hooks for steering, an additive per-key attention bias for weighted ICL, tree masks and
explicit positions for speculative decoding) cost one `if` each when unused.

Cache layout: row b holds `cache.lengths[b]` valid slots. A forward pass over T new tokens writes them to
slots lengths[b] .. lengths[b]+T-1 of row b; rows may hold different lengths (no left padding), and
`cache.rollback` truncates a row to any earlier length (speculative decoding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .config import ModelConfig


# ----------------------------------------------------------------------------------------------- RoPE
def rope_inv_freq(cfg: ModelConfig) -> tuple[Tensor, float]:
    """Inverse frequencies and attention scaling for the RoPE variants Llama-family configs use.

    default, linear and llama3 are written out (a few lines each); other types (yarn, dynamic, longrope)
    are delegated to transformers' own ROPE_INIT_FUNCTIONS so they match it by construction.
    """
    dim = cfg.head_dim
    base = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return base, 1.0
    if kind == "linear":
        return base / float(rs["factor"]), 1.0
    if kind == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / base
        scaled = torch.where(wavelen > old / lo, base / factor, base)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled), 1.0
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_dict = cfg.to_hf()
    hf = AutoConfig.for_model(hf_dict.pop("model_type"), **hf_dict)
    inv, scale = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")
    return inv.float(), float(scale)


def _on(values: list[int], dev: torch.device) -> Tensor:
    """A small host list on `dev` without a host sync: `torch.tensor(.., device=cuda)` copies synchronously, which
    would wait for every queued kernel in each decode step of a ragged batch."""
    t = torch.tensor(values)
    return t if dev.type == "cpu" else t.to(dev, non_blocking=True)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, T, D]; cos/sin: [B, 1, T, D] (rotate-half convention, as HF Llama)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ----------------------------------------------------------------------------------------------- cache
class KVCache:
    """Preallocated per-layer K/V buffers [B, n_kv, capacity, head_dim] with per-row lengths."""

    def __init__(
        self, cfg: ModelConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ):
        shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.lengths: list[int] = [0] * batch
        self.capacity = capacity
        self.batch = batch
        self.key_bias: Tensor | None = None  # [B, capacity] additive attention bias per key slot (weighted ICL)

    def rollback(self, lengths: int | list[int]) -> None:
        """Truncate rows to earlier lengths; the stale slots are simply overwritten later."""
        new = [lengths] * self.batch if isinstance(lengths, int) else list(lengths)
        if any(n > o or n < 0 for n, o in zip(new, self.lengths)):
            raise ValueError(f"rollback to {new} from {self.lengths}: can only shorten")
        self.lengths = new

    def reorder(self, index: Tensor, host_index: list[int] | None = None) -> None:
        """Select/reorder rows (e.g. drop finished rows, or fan one prefix out to many completions). host_index:
        the same indices as a list, where the caller has them (saves a device->host copy)."""
        for i in range(len(self.k)):
            self.k[i] = self.k[i].index_select(0, index)
            self.v[i] = self.v[i].index_select(0, index)
        idx = index.tolist() if host_index is None else list(host_index)
        self.lengths = [self.lengths[j] for j in idx]
        if self.key_bias is not None:
            self.key_bias = self.key_bias.index_select(0, index)
        self.batch = len(idx)

    def gather_slots(self, row: int, src: Tensor, dst_start: int) -> None:
        """Copy slots `src` of `row` to dst_start.. (compacts an accepted draft-tree path)."""
        n = src.numel()
        for i in range(len(self.k)):
            self.k[i][row, :, dst_start : dst_start + n] = self.k[i][row, :, src]
            self.v[i][row, :, dst_start : dst_start + n] = self.v[i][row, :, src]


# ----------------------------------------------------------------------------------------------- layers
class Linear(nn.Linear):
    """nn.Linear that runs inference on CPU through lmlab's packed, batch-invariant kernel (lmlab.core.kernels).

    Used for fp32 activations, no autograd and at most `kernels.MAX_ROWS` rows; otherwise plain F.linear. fp32
    weights are read in place; other forms (bf16, 4-/8-bit) are made on first use and remade whenever the weight
    changes (its version counter moves), so training and then decoding stays correct. `pack_dtype = torch.bfloat16` streams bf16 weights (weight-only
    bf16, set by `Transformer.set_weight_dtype`); `kernels.Q4` / `kernels.Q8` stream 4- / 8-bit group-quantized ones (`quant.use_group_packs`).
    """

    pack_dtype: torch.dtype = torch.float32
    act8: bool = False  # 4-bit packs only: 8-bit activations (`kernels.packed_linear_q4`; a draft's setting)
    _pack_key: tuple | None = None
    # (kernels.Q4 | kernels.Q8, pack) once `quant.quantize_groups` has dropped the float weight (then None) for its
    # group codes. Not a meta tensor: torch 2.13's F.linear of a CPU input and a meta weight returns uninitialised
    # memory instead of failing.
    codes: tuple | None = None

    def dense_weight(self) -> Tensor:
        """The fp32 weight: the parameter, or a transient copy dequantized from `codes` where it was dropped."""
        if self.codes is None:
            return self.weight
        scheme, pack = self.codes
        return (kernels.dequant_q4 if scheme == kernels.Q4 else kernels.dequant_q8)(*pack, self.out_features)

    def _packed(self):
        if self.codes is not None and self.codes[0] == self.pack_dtype:
            return self.codes[1]
        w = self.weight
        key = (id(self.codes), self.pack_dtype) if w is None else (w.data_ptr(), w._version, self.pack_dtype)
        if self._pack_key != key:
            quant = {kernels.Q4: kernels.pack_q4, kernels.Q8: kernels.pack_q8}.get(self.pack_dtype)
            w = self.dense_weight()  # (another form than the codes': a self-draft's 4-bit layers of a q8 model)
            pack = quant(w) if quant else kernels.pack(w, self.pack_dtype)
            self._pack, self._pack_key = pack, key
        return self._pack

    def forward(self, x: Tensor) -> Tensor:
        if kernels.usable(x, x.numel() // x.shape[-1], self.weight):
            if self.pack_dtype == kernels.Q4:
                return kernels.packed_linear_q4(x, self._packed(), self.out_features, self.bias, self.act8)
            if self.pack_dtype == kernels.Q8:
                y = kernels.packed_linear_q8(x, self._packed(), self.out_features)
                return y if self.bias is None else y + self.bias
            return kernels.packed_linear(x, self._packed(), self.out_features, self.bias)
        return F.linear(x, self.dense_weight(), self.bias)


def set_weight_dtype(module: nn.Module, dtype: torch.dtype, exact: bool = True) -> None:
    """See `Transformer.set_weight_dtype`; works on any module holding lmlab Linears (draft heads too)."""
    for m in module.modules():
        if isinstance(m, Linear):
            if exact and dtype == torch.bfloat16:
                with torch.no_grad():
                    m.weight.copy_(m.weight.to(torch.bfloat16).to(m.weight.dtype))
            m.pack_dtype = dtype


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype == torch.float32 and kernels.usable(x, x.numel() // x.shape[-1], self.weight):
            return kernels.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.wqkv = Linear(cfg.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=cfg.attention_bias)
        self.wo = Linear(self.nh * self.hd, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kc: Tensor, vc: Tensor, write: _Write) -> Tensor:
        B, T, _ = x.shape
        qkv = self.wqkv(x)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = apply_rope(q.view(B, T, self.nh, self.hd).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(B, T, self.nkv, self.hd).transpose(1, 2), cos, sin)
        v = v.view(B, T, self.nkv, self.hd).transpose(1, 2)
        if write.start is not None:  # all rows at the same length: a plain slice write
            kc[:, :, write.start : write.start + T] = k
            vc[:, :, write.start : write.start + T] = v
        else:
            kc[write.rows, write.heads, write.slots] = k
            vc[write.rows, write.heads, write.slots] = v
        if write.kernel:  # batch-invariant: each query sums over exactly its visible keys, in cache order
            y = kernels.attention(q, kc, vc, write.visible(B, T), 1.0 / math.sqrt(self.hd))
        else:
            keys, vals = kc[:, :, : write.used], vc[:, :, : write.used]
            y = F.scaled_dot_product_attention(
                q, keys, vals, attn_mask=write.mask, is_causal=write.causal, enable_gqa=self.nkv != self.nh
            )
        return self.wo(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inter = cfg.intermediate_size
        self.w13 = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)  # gate ‖ up
        self.w2 = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.inter, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kc, vc, write):
        if (
            write.fused
            and self.attn_norm.weight.dtype == torch.float32
            and type(self.mlp) is MLP
            and type(self.attn) is Attention
        ):
            return self._fused(x, cos, sin, kc, vc, write)
        x = x + self.attn(self.attn_norm(x), cos, sin, kc, vc, write)
        return x + self.mlp(self.mlp_norm(x))

    def _fused(self, x, cos, sin, kc, vc, write):
        """The same block in one kernel call (`kernels.decoder_block`: same ops, same bits, no per-op dispatch); a 4-bit
        self-draft's blocks skip torch's elementwise ops as well (`kernels.draft_block`: its numbers only propose)."""
        a, m = self.attn, self.mlp

        def w(lin: Linear) -> list[Tensor]:
            p = lin._packed()
            return list(p) if isinstance(p, tuple) else [p]

        B, T = x.shape[:2]
        q4 = getattr(a.wqkv, "pack_dtype", None) == kernels.Q4  # a 4-bit self-draft (int8 layers have no pack_dtype)
        fn = kernels.draft_block if q4 else kernels.decoder_block
        extra = (a.wqkv.act8,) if q4 else ()
        return fn(
            x,
            self.attn_norm.weight,
            self.mlp_norm.weight,
            self.attn_norm.eps,
            w(a.wqkv),
            a.wqkv.bias,
            w(a.wo),
            w(m.w13),
            m.w13.bias,
            w(m.w2),
            m.w2.bias,
            a.nh,
            a.nkv,
            a.hd,
            m.inter,
            cos,
            sin,
            kc,
            vc,
            write.start,
            write.visible(B, T),
            1.0 / math.sqrt(a.hd),
            *extra,
        )


@dataclass
class _Write:
    """Where a forward pass writes its K/V and which keys each query may see (built once per pass)."""

    start: int | None  # common start slot when every row has the same length
    rows: Tensor | None
    heads: Tensor | None
    slots: Tensor | None
    used: int  # keys [0, used) are read
    mask: Tensor | None  # [B, 1, T, used] bool or float, or None
    causal: bool
    kernel: bool = False  # attention through lmlab's CPU kernel (set by Transformer.forward)
    fused: bool = False  # dense blocks as one kernel call each (kernels.decoder_block; set by Transformer.forward)
    _visible: Tensor | None = None

    def visible(self, B: int, T: int) -> Tensor:
        """[B, T, used] bool: the keys each new token sees (built once per pass, shared by all layers)."""
        if self._visible is None:
            if self.mask is not None:
                vis = self.mask[:, 0].expand(B, T, self.used)
            elif self.causal:
                vis = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)
            else:
                vis = torch.ones(B, T, self.used, dtype=torch.bool)
            self._visible = vis.contiguous()
        return self._visible


@dataclass
class ForwardOut:
    logits: Tensor | None  # [B, T, V] ("all"), [B, V] ("last") or None
    hidden_states: list[Tensor] | None  # embeddings, then each layer's output (HF convention: last one normed)
    last_hidden: Tensor  # final normed hidden state [B, T, H] (draft heads read it)


# ----------------------------------------------------------------------------------------------- model
class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("inv_freq", torch.empty(cfg.head_dim // 2), persistent=False)
        self.reset_rope()

    def reset_rope(self) -> None:
        """(Re)compute RoPE frequencies on the real device (needed after meta-device construction)."""
        with torch.device("cpu"):
            inv_freq, self.rope_scale = rope_inv_freq(self.cfg)
        if self.inv_freq.is_meta:
            self.inv_freq = inv_freq
        else:
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        """Keep RoPE frequencies in fp32 on whatever device/dtype the model moves to (bf16 inv_freq drifts)."""
        out = super()._apply(fn, recurse)
        if not self.inv_freq.is_meta:
            self.reset_rope()
        return out

    def set_weight_dtype(self, dtype: torch.dtype, exact: bool = True) -> None:
        """Weight-only bf16 (`torch.bfloat16`) or back to fp32 for the projections and LM head; activations stay
        fp32. exact: round the fp32 weights to bf16 values too, so that every path computes the same model;
        without it only the kernel path streams bf16 (for drafts, whose numbers only steer acceptance)."""
        set_weight_dtype(self, dtype, exact)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache(self.cfg, batch, capacity, self.dtype, self.device)

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        freqs = positions[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin

    def _plan(
        self, cache: KVCache, T: int, positions: Tensor | None, tree_mask: Tensor | None
    ) -> tuple[_Write, Tensor]:
        lens = cache.lengths
        B = cache.batch
        top = max(lens) + T
        if top > cache.capacity:
            raise ValueError(f"KV cache overflow: need {top} slots, capacity {cache.capacity}")
        dev = self.device
        uniform = min(lens) == max(lens)
        L = lens[0]
        if positions is None:
            base = _on(lens, dev)[:, None] if not uniform else torch.full((B, 1), L, device=dev)
            positions = base + torch.arange(T, device=dev)[None, :]
        plain = uniform and tree_mask is None and cache.key_bias is None
        if plain:  # fast path: no mask tensor at all
            write = _Write(L, None, None, None, L + T, None, causal=(T > 1 and L == 0))
            if T > 1 and L > 0:  # chunked prefill on top of an existing prefix: explicit causal mask
                q = torch.arange(T, device=dev)[:, None] + L
                write.mask = (torch.arange(L + T, device=dev)[None, :] <= q)[None, None]
            return write, positions
        lens_t = _on(lens, dev)
        slots = lens_t[:, None] + torch.arange(T, device=dev)[None, :]  # [B, T]
        key = torch.arange(top, device=dev)
        old = key[None, None, :] < lens_t[:, None, None]  # [B, 1, S]
        rel = key[None, :] - lens_t[:, None]  # [B, S] index among the new tokens
        if tree_mask is None:
            new = (rel[:, None, :] >= 0) & (rel[:, None, :] <= torch.arange(T, device=dev)[None, :, None])
        else:  # tree_mask [B or 1, T, T]: new token t may see new token u
            tm = tree_mask.expand(B, T, T)
            idx = rel.clamp(0, T - 1)[:, None, :].expand(B, T, top)
            new = (rel[:, None, :] >= 0) & (rel[:, None, :] < T) & torch.gather(tm, 2, idx)
        mask = (old | new)[:, None]  # [B, 1, T, S]
        if cache.key_bias is not None:
            fmask = torch.zeros(mask.shape, dtype=self.dtype, device=dev)
            fmask = fmask + cache.key_bias[:, None, None, :top].to(self.dtype)
            mask = fmask.masked_fill(~mask, float("-inf"))
        if uniform:
            write = _Write(L, None, None, None, top, mask, causal=False)
        else:
            rows = torch.arange(B, device=dev)[:, None, None]
            heads = torch.arange(self.cfg.num_kv_heads, device=dev)[None, :, None]
            write = _Write(None, rows, heads, slots[:, None, :], top, mask, causal=False)
        return write, positions

    def forward(
        self,
        input_ids: Tensor,
        cache: KVCache,
        *,
        num_tokens: list[int] | None = None,
        positions: Tensor | None = None,
        tree_mask: Tensor | None = None,
        logits: str = "last",
        output_hidden_states: bool = False,
        hooks: dict[int, Callable[[Tensor], Tensor]] | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> ForwardOut:
        """Run T new tokens per row through the model, appending their K/V to `cache`.

        num_tokens: real tokens per row (rows are right-padded to T); lengths advance by these counts, and
          "last" logits are read at each row's last real token. Default: T for every row.
        positions: RoPE positions [B, T] (default: the slot index); tree_mask: [B|1, T, T] bool visibility
          among the new tokens (default causal) - both for draft-tree verification.
        logits: "last" -> [B, V], "all" -> [B, T, V], "none" -> None.
        hooks: {layer: fn(hidden) -> hidden} applied to that layer's output (activation steering).
        """
        B, T = input_ids.shape
        write, pos = self._plan(cache, T, positions, tree_mask)
        cos, sin = self._rope(pos)
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        write.kernel = kernels.attention_ok(x, B * T, self.cfg.head_dim) and (
            write.mask is None or write.mask.dtype == torch.bool
        )
        write.fused = write.kernel and write.start is not None and kernels.fused_ok(x)
        hidden = [x] if output_hidden_states else None
        packs = getattr(self, "block_packs", None)  # 4-bit layers (quant.use_group_packs): all blocks in one call
        if packs is not None and write.fused and not hooks and hidden is None:
            cfg = self.cfg
            x = kernels.draft_layers(
                x,
                packs,
                cache.k,
                cache.v,
                cfg.rms_norm_eps,
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim,
                cfg.intermediate_size,
                cos,
                sin,
                write.start,
                write.visible(B, T),
                1.0 / math.sqrt(cfg.head_dim),
                getattr(self, "block_act8", False),
            )
            layers = ()
        else:
            layers = self.layers
        for i, layer in enumerate(layers):
            x = layer(x, cos, sin, cache.k[i], cache.v[i], write)
            if hooks and i in hooks:
                x = hooks[i](x)
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x
        n = num_tokens if num_tokens is not None else [T] * B
        cache.lengths = [l + k for l, k in zip(cache.lengths, n)]
        if logits == "last":
            if num_tokens is None:
                last = x[:, -1]
            else:
                last = x[torch.arange(B, device=x.device), torch.tensor(n, device=x.device) - 1]
            out = self.lm_head(last)
        elif logits == "all":
            out = self.lm_head(x)
        else:
            out = None
        return ForwardOut(out, hidden, x)
