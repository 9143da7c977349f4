"""Weight-only quantization for the native model (opt-in: `load_model(..., quant="int8" | "q8" | "q4")`).

int8 (per output channel):

Why hand-written: batch-1 decoding reads every weight once per token, so bytes moved set the speed on CPUs
and GPUs alike; int8 weights halve bf16's bytes. This is gpt-fast's WeightOnlyInt8 scheme (symmetric,
per-output-channel scales). With fp32 activations on a CPU where lmlab's kernels run, the layers go through
`kernels.packed_linear` on the int8 codes in place (batch-invariant, so speculative decoding of an int8 target stays
lossless, and whole blocks fuse as for fp32 weights); bf16 activations on a CPU go through torch's
`_weight_int8pack_mm` kernel, and everything else (fp32 beyond the kernel's rows, other devices) dequantizes and
multiplies. Outputs are no longer bit-equal to the float model; tests bound the
logit error and top-1 agreement.

q8 / q4 (GGUF's Q8_0 / Q4_1 groups of 32 inputs, the formats of the embedded GGUF file and of llama.cpp's usual
files): `quantize_groups` rounds every projection (q4: and the LM head to Q8_0, as llama.cpp keeps its output
tensor at higher precision) to the group codes and writes the dequantized values back into the fp32 weights. So the
model's numbers are the quantized model's on every path; where lmlab's kernels run, the layers stream the packed
codes (0.56 / 1.06 bytes per weight instead of 4) and all decoder blocks of a q4 model run in one kernel call.
Without the kernels (LMLAB_KERNELS=0, CUDA) the same numbers run through fp32 `F.linear`: correct, not faster.
A Q4_1-sourced checkpoint (the embedded SmolLM2) rounds to its own codes, so `q4` is then the file's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .errors import LmlabError
from .model import Linear


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = (linear.dense_weight() if isinstance(linear, Linear) else linear.weight).detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.register_buffer("weight", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(act_dtype))
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(act_dtype), requires_grad=False)
        )
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _packed(self) -> tuple[Tensor, Tensor]:
        """The kernel's form (`model.Block` fuses it like a float Linear's): the int8 codes and fp32 scales."""
        return self.weight, self.scales.float()

    def forward(self, x: Tensor) -> Tensor:
        shape, rows = x.shape, x.numel() // x.shape[-1]
        if self.scales.dtype == torch.float32 and kernels.usable(x, min(rows, kernels.MAX_ROWS)):
            if rows <= kernels.MAX_ROWS:
                return kernels.packed_linear(x, self.weight, self.out_features, self.bias, self.scales)
            # More rows (a mixed-length batch's padded prefill) in kernel-sized pieces: each row keeps its bits, no
            # dequantized copy is made, and it runs at the float GEMM's speed (0.7-1.3x of it at 140-560 rows).
            pieces = x.reshape(rows, shape[-1]).split(kernels.MAX_ROWS)
            y = torch.cat(
                [kernels.packed_linear(c, self.weight, self.out_features, self.bias, self.scales) for c in pieces]
            )
            return y.view(*shape[:-1], self.out_features)
        x2 = x.reshape(-1, shape[-1]).to(self.scales.dtype)
        if x2.device.type == "cpu" and x2.dtype != torch.float32:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:
            # Not torch's _weight_int8pack_mm for fp32 activations: 4x slower at 1 row and 27-60x at 140-560 rows than
            # this (3072x576, 140 rows: 109 ms vs 4.0 ms; Zen 4, 2 threads). Through the padded prefill it made
            # batch-8 `--quant int8 --dtype float32` decoding 5x slower than batch 1 (benchmarks/RESULTS.md).
            y = F.linear(x2, self.weight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)  # activations in, activations out


def leave_file_mapping(model: nn.Module) -> None:
    """Copy the float tensors a quantized model keeps (norms, embedding) into memory of its own (`load_model` does,
    after quantizing). A checkpoint loads as views of its memory-mapped safetensors file, and one such view keeps the
    whole mapping, with every page read so far, in the resident set (SmolLM2-135M: ~400 MB, the pages of the weights
    that quantization replaced). Done after the replaced weights are freed, the peak stays near the float model's."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu":
            t.data = t.data.clone()


def quantize_int8(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace the transformer's projection and LM-head Linears by Int8Linear (embeddings stay float), in place."""
    for layer in model.layers:
        layer.attn.wqkv = Int8Linear(layer.attn.wqkv, act_dtype)
        layer.attn.wo = Int8Linear(layer.attn.wo, act_dtype)
        layer.mlp.w13 = Int8Linear(layer.mlp.w13, act_dtype)
        layer.mlp.w2 = Int8Linear(layer.mlp.w2, act_dtype)
    model.lm_head = Int8Linear(model.lm_head, act_dtype)  # unties it from the (float) embedding
    return model


GROUP_SCHEMES = {"q8": (kernels.Q8, kernels.Q8), "q4": (kernels.Q4, kernels.Q8)}  # (projections, LM head)
_PACK = {kernels.Q4: (kernels.pack_q4, kernels.dequant_q4), kernels.Q8: (kernels.pack_q8, kernels.dequant_q8)}


def use_group_packs(model: nn.Module, layers: str, head: str, act8: bool = False) -> nn.Module:
    """Stream every projection as `layers` groups and the LM head as `head` groups (`kernels.Q4` / `kernels.Q8`)
    through the kernels, packed now rather than inside the first timed call. With 4-bit layers and no biases, all
    decoder blocks of a step run in one kernel call (`Transformer.block_packs`). The weights are left as they are:
    the packs are the only new memory (specdec's selfq4 draft shares its target's tensors this way). act8: 4-bit
    layers take 8-bit activations (`kernels.packed_linear_q4`), as llama.cpp's Q4_1 does: faster, not the same numbers
    as the float model with these weights, so for drafts."""
    for m in model.layers.modules():
        if isinstance(m, Linear):
            m.pack_dtype = layers
            m.act8 = act8 and layers == kernels.Q4
    model.block_act8 = act8 and layers == kernels.Q4
    model.lm_head.pack_dtype = head if model.cfg.hidden_size % 32 == 0 else torch.bfloat16
    for m in model.modules():
        if isinstance(m, Linear):
            m._packed()
    if layers == kernels.Q4 and not any(m.bias is not None for m in model.layers.modules() if isinstance(m, Linear)):
        model.block_packs = [
            [
                b.attn_norm.weight,
                b.mlp_norm.weight,
                *b.attn.wqkv._packed(),
                *b.attn.wo._packed(),
                *b.mlp.w13._packed(),
                *b.mlp.w2._packed(),
            ]
            for b in model.layers
        ]
    return model


def _round_in_tiles(w: Tensor, scheme: str, out: Tensor | None = None, rows: int = 64 * kernels.COLS) -> tuple:
    """The group codes of w [N, K] (and w rounded to them, written to `out`), `rows` rows at a time: the codes are
    per row and the packs concatenate along their tile axis, so this equals one call but bounds the transient fp32
    copies (for SmolLM2's 49152-row LM head one call made ~0.5 GB of them, the load's peak)."""
    pack, unpack = _PACK[scheme]
    parts = []
    for i in range(0, w.shape[0], rows):
        codes = pack(w[i : i + rows])
        if out is not None:
            out[i : i + rows].copy_(unpack(*codes, min(rows, w.shape[0] - i)))
        parts.append(codes)
    return tuple(torch.cat(p) for p in zip(*parts))


def quantize_groups(model: nn.Module, scheme: str) -> nn.Module:
    """`--quant q8|q4`: round the weights to GGUF-style groups (module docstring) and, where the kernels run, stream
    the packs. There each projection's float weight is dropped once packed, only its codes stay (`Linear.codes`;
    `weight` is None, so a stray read fails instead of computing garbage): with `leave_file_mapping`, SmolLM2-135M q4
    holds ~0.7 GB after loading instead of ~1.5 GB (benchmarks/RESULTS.md). Elsewhere
    (LMLAB_KERNELS=0, CUDA) the dequantized codes are written into the float weights for F.linear."""
    layers, head = GROUP_SCHEMES[scheme]
    odd = sorted({m.in_features for m in model.modules() if isinstance(m, Linear) and m.in_features % 32})
    if odd:
        raise LmlabError(
            f"--quant {scheme} needs layer input sizes divisible by 32, this model has {odd}", hint="use --quant int8"
        )
    projections = [m for m in model.modules() if isinstance(m, Linear) and m is not model.lm_head]
    with torch.no_grad():
        if not (kernels.enabled() and model.embed.weight.device.type == "cpu"):
            for m in projections:
                _round_in_tiles(m.weight, layers, out=m.weight)
            _round_in_tiles(model.lm_head.weight, head, out=model.lm_head.weight)
            return model
        for m in projections:
            m.codes = (layers, _round_in_tiles(m.dense_weight(), layers))
            m.register_parameter("weight", None)
        # the LM head keeps its float weight, rounded (tied, it is the embedding; code outside core reads its rows)
        _round_in_tiles(model.lm_head.weight, head, out=model.lm_head.weight)
    use_group_packs(model, layers, head)
    return model
