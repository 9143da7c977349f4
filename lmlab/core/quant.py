"""Weight-only int8 quantization for the native model (opt-in: `load_model(..., quant="int8")`).

Why hand-written: batch-1 decoding reads every weight once per token, so bytes moved set the speed on CPUs
and GPUs alike; int8 weights halve bf16's bytes. This is gpt-fast's WeightOnlyInt8 scheme (symmetric,
per-output-channel scales). With fp32 activations on a CPU where lmlab's kernels run, the layers go through
`kernels.packed_linear` on the int8 codes in place (batch-invariant, so speculative decoding of an int8 target stays
lossless, and whole blocks fuse as for fp32 weights); otherwise through torch's `_weight_int8pack_mm` kernel, with a
dequantize-and-matmul fallback off the CPU. Outputs are no longer bit-equal to the float model; tests bound the
logit error and top-1 agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float()
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
        shape = x.shape
        if self.scales.dtype == torch.float32 and kernels.usable(x, x.numel() // shape[-1]):
            return kernels.packed_linear(x, self.weight, self.out_features, self.bias, self.scales)
        x2 = x.reshape(-1, shape[-1]).to(self.scales.dtype)
        if x2.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)
        else:
            y = F.linear(x2, self.weight.to(x2.dtype)) * self.scales
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)  # activations in, activations out


def quantize_int8(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Replace the transformer's projection and LM-head Linears by Int8Linear (embeddings stay float), in place."""
    for layer in model.layers:
        layer.attn.wqkv = Int8Linear(layer.attn.wqkv, act_dtype)
        layer.attn.wo = Int8Linear(layer.attn.wo, act_dtype)
        layer.mlp.w13 = Int8Linear(layer.mlp.w13, act_dtype)
        layer.mlp.w2 = Int8Linear(layer.mlp.w2, act_dtype)
    model.lm_head = Int8Linear(model.lm_head, act_dtype)  # unties it from the (float) embedding
    return model
