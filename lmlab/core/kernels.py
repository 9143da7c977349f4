"""Native CPU kernels for decoding: batch-invariant linear layer and attention (`csrc/decode_kernels.cpp`).

Why hand-written: decoding 1-16 tokens is bound by streaming the weights, and on this class of machine MKL's
small-M SGEMM streams them at ~11 GB/s of a ~30 GB/s bus (and at half that for 2 rows). The kernel streams
packed [N/64, K, 64] blocks at 27-32 GB/s for 1-4 rows, so plain decoding is ~2.5x faster in its linear
layers and a 4-token verification pass costs about what a 1-token step does. Every output element is one
FMA chain over K in order, whatever the row count and the row's place, so a k-token pass gives bit-identical
rows to k single-token passes. Attention likewise: each query sums over exactly the cached keys it may see, in
cache order, so a lone step, a row of a causal block and a node of a draft tree get the same bits. Together
greedy speculative decoding is lossless by construction (tests/core/test_kernels.py checks it bit for bit).

Built on first use with torch's C++ extension loader (~30 s, cached under the lmlab cache); needs AVX-512
(F, BW, VL). Without it, or with LMLAB_KERNELS=0, `enabled()` is False and models use `F.linear`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

COLS = 64  # output columns per packed block: 4 AVX-512 vectors of fp32
MAX_ROWS = 128  # rows per kernel call; longer prompts are prefilled in pieces of this size (engine.chunked_forward)
_SOURCE = Path(__file__).parent / "csrc" / "decode_kernels.cpp"
_EXT = None
_TRIED = False


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _build():
    from torch.utils.cpp_extension import load

    from .paths import cache_dir

    # -fopenmp: at::parallel_for is a header template that runs serially unless the extension itself is built
    # with OpenMP; without it every kernel ran on one core (linear layers stream 37 GB/s on one core, 52 on two)
    flags = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp"]
    tag = hashlib.sha256(_SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()[:12]
    folder = cache_dir("ext", f"decode_kernels-{tag}")
    return load(
        f"lmlab_decode_kernels_{tag}",
        [str(_SOURCE)],
        build_directory=str(folder),
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def extension():
    """The compiled module, or None where this CPU or toolchain cannot run it (logged once)."""
    global _EXT, _TRIED
    if _TRIED:
        return _EXT
    _TRIED = True
    if os.environ.get("LMLAB_KERNELS", "1") == "0":
        return None
    if not {"avx512f", "avx512bw", "avx512vl"} <= _cpu_flags():
        log.info("lmlab kernels off: this CPU lacks AVX-512")
        return None
    try:
        _EXT = _build()
    except Exception as e:  # no compiler, no ninja: fall back to F.linear, slower but identical in meaning
        log.warning(
            "lmlab kernels off: building %s failed (%s)",
            _SOURCE.name,
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
    return _EXT


def enabled() -> bool:
    return extension() is not None


def usable(x: Tensor, rows: int, weight: Tensor | None = None) -> bool:
    """Kernel path: fp32 CPU activations, at most MAX_ROWS rows, no autograd, kernels built."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and rows <= MAX_ROWS
        and not (torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)))
        and enabled()
    )


def attention_ok(x: Tensor, rows: int, head_dim: int) -> bool:
    return head_dim % 16 == 0 and head_dim <= 128 and usable(x, rows)


def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, visible: Tensor, scale: float) -> Tensor:
    """q [B, H, T, D], caches [B, Hkv, S, D], visible [B, T, used] bool -> [B, H, T, D]."""
    return _EXT.attention(q.contiguous(), k_cache, v_cache, visible, scale)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim in one fused pass (callers check `usable`)."""
    shape = x.shape
    return _EXT.rms_norm(x.reshape(-1, shape[-1]).contiguous(), weight, eps).view(shape)


def pack(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """[N, K] -> [ceil(N/64), K, 64] in `dtype` (fp32 or bf16), zero-padded columns: one contiguous stream per block."""
    n, k = weight.shape
    blocks = (n + COLS - 1) // COLS
    w = weight.detach().to(dtype)
    if blocks * COLS != n:
        w = torch.cat([w, w.new_zeros(blocks * COLS - n, k)])
    return w.view(blocks, COLS, k).transpose(1, 2).contiguous()


def packed_linear(x: Tensor, packed: Tensor, n: int, bias: Tensor | None) -> Tensor:
    """x [..., K] fp32 -> [..., n] through the kernel (callers check `enabled()` and the row limit)."""
    shape = x.shape
    y = _EXT.packed_linear(x.reshape(-1, shape[-1]).contiguous(), packed, n, bias)
    return y.view(*shape[:-1], n)


Q4 = "q4"  # `Linear.pack_dtype` values for 4- and 8-bit group-quantized weights (drafts only: not the model's own numbers)
Q8 = "q8"


def _groups(weight: Tensor, what: str) -> tuple[Tensor, int, int]:
    """[N, K] fp32 weights, rows zero-padded to whole 64-column blocks, as groups of 32 inputs [N', K/32, 32]."""
    n, k = weight.shape
    if k % 32:
        raise ValueError(f"{what} packing needs an input size divisible by 32, got {k}")
    blocks = (n + COLS - 1) // COLS
    w = weight.detach().float()
    if blocks * COLS != n:
        w = torch.cat([w, w.new_zeros(blocks * COLS - n, k)])
    return w.view(blocks * COLS, k // 32, 32), blocks, k


def pack_q4(weight: Tensor) -> tuple[Tensor, Tensor]:
    """[N, K] -> 4-bit codes and fp16 scales/offsets per 32 inputs (GGUF's Q4_1 scheme: w ~ d q + m, q in 0..15,
    d = (max - min) / 15, m = min), packed for `packed_linear_q4`: q [ceil(N/64), K, 32] uint8, dm [ceil(N/64),
    K/32, 2, 64] fp16. A Q4_1-sourced checkpoint (the embedded SmolLM2) round-trips to its own codes."""
    g, blocks, k = _groups(weight, "4-bit")
    lo, hi = g.amin(-1), g.amax(-1)
    d = ((hi - lo) / 15).half()
    m = lo.half()
    df = d.float().clamp_min(torch.finfo(torch.float16).tiny)
    q = ((g - m.float()[..., None]) / df[..., None]).round().clamp(0, 15).to(torch.uint8).view(blocks, COLS, k)
    q = q.transpose(1, 2)  # [blocks, K, 64]
    codes = torch.cat([q[..., 0:16] | (q[..., 16:32] << 4), q[..., 32:48] | (q[..., 48:64] << 4)], -1).contiguous()
    dm = torch.stack([d.view(blocks, COLS, k // 32), m.view(blocks, COLS, k // 32)], 2).permute(0, 3, 2, 1).contiguous()
    return codes, dm


def pack_q8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """[N, K] -> int8 codes and fp16 scales per 32 inputs (GGUF's Q8_0 scheme: w ~ d q, d = max|w| / 127), packed for
    `packed_linear_q8`: q [ceil(N/64), K, 64] int8, d [ceil(N/64), K/32, 64] fp16."""
    g, blocks, k = _groups(weight, "8-bit")
    d = (g.abs().amax(-1) / 127).half()
    q = (g / d.float().clamp_min(torch.finfo(torch.float16).tiny)[..., None]).round().clamp(-127, 127).to(torch.int8)
    q = q.view(blocks, COLS, k).transpose(1, 2).contiguous()
    return q, d.view(blocks, COLS, k // 32).transpose(1, 2).contiguous()


def dequant_q4(codes: Tensor, dm: Tensor, n: int) -> Tensor:
    """The [n, K] weights a `pack_q4` result stands for (tests and agreement checks)."""
    blocks, k, _ = codes.shape
    q = torch.cat(
        [codes[..., :16] & 15, codes[..., :16] >> 4, codes[..., 16:] & 15, codes[..., 16:] >> 4], -1
    ).float()  # [blocks, K, 64]
    d, m = dm[:, :, 0].float(), dm[:, :, 1].float()  # [blocks, K/32, 64]
    w = q * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)
    return w.transpose(1, 2).reshape(blocks * COLS, k)[:n]


def packed_linear_q8(x: Tensor, packed: tuple[Tensor, Tensor], n: int) -> Tensor:
    """x [..., K] fp32 -> [..., n] through the 8-bit kernel (no bias; callers check `enabled()` and the row limit)."""
    shape = x.shape
    y = _EXT.packed_linear_q8(x.reshape(-1, shape[-1]).contiguous(), packed[0], packed[1], n)
    return y.view(*shape[:-1], n)


def packed_linear_q4(x: Tensor, packed: tuple[Tensor, Tensor], n: int, bias: Tensor | None) -> Tensor:
    """x [..., K] fp32 -> [..., n] through the 4-bit kernel (callers check `enabled()` and the row limit)."""
    shape = x.shape
    y = _EXT.packed_linear_q4(x.reshape(-1, shape[-1]).contiguous(), packed[0], packed[1], n, bias)
    return y.view(*shape[:-1], n)


def fused_ok(x: Tensor) -> bool:
    """Whole decoder blocks in one call (`decoder_block`): kernel-path activations, unless LMLAB_FUSED=0."""
    return (
        usable(x, x.numel() // x.shape[-1])
        and os.environ.get("LMLAB_FUSED", "1") != "0"
        and hasattr(_EXT, "decoder_block")
    )


def decoder_block(x: Tensor, *args) -> Tensor:
    """A Llama decoder block through the kernels in one call (see csrc); callers check `fused_ok`."""
    return _EXT.decoder_block(x.contiguous(), *args)


def draft_block(x: Tensor, *args) -> Tensor:
    """A draft's decoder block: the kernels plus plain loops for RoPE, SwiGLU and residuals (see csrc)."""
    return _EXT.draft_block(x.contiguous(), *args)


def draft_layers(x: Tensor, *args) -> Tensor:
    """Every decoder block of a 4-bit draft in one call (see csrc)."""
    return _EXT.draft_layers(x.contiguous(), *args)
