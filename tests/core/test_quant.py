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
