"""Native CPU kernels for decoding: batch-invariant linear layers, attention and RMSNorm (`csrc/decode_kernels.cpp`).

Why hand-written: decoding 1-16 tokens is bound by streaming the weights, and torch's small-M GEMM streams them well
below the memory bus's rate (on a 2-core AVX2 EPYC, fp32 batch-1 decoding through it runs at 28 % of the bound set
by 21.8 GB/s). More important, it sums a lone row (GEMV) and a block of rows in different orders. Here every output
element is one fixed chain over K, whatever the row count, the row's place and the thread count, so a k-token pass
gives bit-identical rows to k single-token passes. Attention likewise: each query sums over exactly the cached keys
it may see, in cache order, so a lone step, a row of a causal block and a node of a draft tree get the same bits.
Together greedy speculative decoding is lossless by construction (tests/core/test_kernels.py checks it bit for bit).

One portable source, written with GCC/Clang vector extensions and built on first use for the host (`-march=native`
on x86-64, plain -O3 on arm64, where NEON is the baseline; ~30 s, cached under the lmlab cache, keyed by source,
torch version, flags and host CPU so that a build from another CPU is never loaded). Vectors are 16 floats with
AVX-512, 8 with AVX2 + FMA, 4 with NEON. Results are deterministic and batch-invariant on each ISA; the bits differ
between ISAs (other lane counts, other partial sums), as they do between any two BLAS builds. Off (models use torch's
ops) on CPUs with none of these, where the build fails, or with LMLAB_KERNELS=0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

COLS = 64  # output columns per packed block of the 4- and 8-bit draft formats
MAX_ROWS = 128  # rows per kernel call; longer prompts are prefilled in pieces of this size (engine.chunked_forward)
_SOURCE = Path(__file__).parent / "csrc" / "decode_kernels.cpp"
_EXT = None
_TRIED = False


def _host() -> str:
    """What identifies this CPU for the build cache: the architecture and its feature flags (a `-march=native` build
    from a CPU with other features may not run here, or may run slower)."""
    machine = platform.machine().lower()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return machine + ":" + " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    try:  # macOS
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
        return machine + ":" + out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return machine + ":" + platform.processor()


def _flags() -> list[str]:
    """-O3 and the host's vector ISA; -ffp-contract=off: only the kernels' explicit FMAs fuse, so the order and
    rounding of every sum is the source's, on every compiler. -fopenmp: at::parallel_for is a header template that
    runs serially unless the extension itself is built with OpenMP (Apple's clang has none: one thread there)."""
    flags = ["-O3", "-ffp-contract=off"]
    if platform.machine().lower() in ("x86_64", "amd64", "i686"):
        flags.append("-march=native")
    if sys.platform != "darwin":
        flags.append("-fopenmp")
    return flags


STALE_LOCK_S = 600.0  # a build takes ~30 s (a few minutes on a loaded machine); an older lock is a dead build's


def _clear_stale_lock(lock: Path, max_age_s: float = STALE_LOCK_S) -> None:
    """Why: torch's loader waits forever on the lock file of a build that was killed (Ctrl-C, a timeout), so every
    later run would hang; a lock older than any build is removed."""
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            log.warning("removing a stale build lock %s (a killed build left it)", lock)
            lock.unlink()
    except FileNotFoundError:
        pass


def _ninja_on_path() -> None:
    """Why: torch's extension loader runs `ninja` from PATH, and the `ninja` wheel (a dependency) puts its binary in
    the environment's bin folder, which is not on PATH when lmlab runs as `.venv/bin/lmlab` without an activated venv
    (on a machine without a system ninja the kernels were then silently off). Found by running the suite in an arm64
    Debian chroot; a system ninja hid it on the x86 machines."""
    if shutil.which("ninja"):
        return
    try:
        import ninja

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        folder = str(Path(sys.executable).parent)
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")


def _build():
    from torch.utils.cpp_extension import load

    from .paths import cache_dir

    _ninja_on_path()
    flags = _flags()
    # torch's folder too: its include paths are in the build file, so two environments sharing the cache would
    # otherwise rebuild each other's copy in turn
    key = _SOURCE.read_bytes() + f"{torch.__version__} {torch.__file__} {' '.join(flags)} {_host()}".encode()
    tag = hashlib.sha256(key).hexdigest()[:12]
    folder = cache_dir("ext", f"decode_kernels-{tag}")
    _clear_stale_lock(folder / "lock")
    return load(
        f"lmlab_decode_kernels_{tag}",
        [str(_SOURCE)],
        build_directory=str(folder),
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
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
    try:
        ext = _build()
    except Exception as e:  # no compiler, no ninja: fall back to torch's ops, slower but identical in meaning
        log.warning(
            "lmlab kernels off: building %s failed (%s)",
            _SOURCE.name,
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
        return None
    if ext.isa().startswith("generic"):  # no vector FMA (x86 before AVX2): torch's own kernels are faster there
        log.info("lmlab kernels off: this CPU has neither AVX2+FMA, AVX-512 nor NEON")
        return None
    _EXT = ext
    return _EXT


def isa() -> str | None:
    """The vector ISA the kernels were built for ("avx2 (8 fp32 lanes)", ...), or None when they are off."""
    return None if extension() is None else _EXT.isa()


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
    """The kernel's form of a weight [N, K]: itself (fp32, no copy when contiguous) or a contiguous copy in `dtype`
    (bf16, or int8 codes). The kernel reads torch's own [N, K] layout, so fp32 and int8 models carry no second copy."""
    return weight.detach().to(dtype).contiguous()


def packed_linear(x: Tensor, packed: Tensor, n: int, bias: Tensor | None, scale: Tensor | None = None) -> Tensor:
    """x [..., K] fp32 -> (x . W^T) * scale + bias [..., n] through the kernel; W [n, K] fp32, bf16 or int8 (int8
    needs `scale`, fp32 [n]). Callers check `enabled()` and the row limit."""
    shape = x.shape
    y = _EXT.packed_linear(x.reshape(-1, shape[-1]).contiguous(), packed, n, bias, scale)
    return y.view(*shape[:-1], n)


Q4 = "q4"  # `Linear.pack_dtype` values for 4- and 8-bit group-quantized weights (`quant.use_group_packs`)
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
    # 16-bit word j of an input's 32 bytes holds columns j, j + 16, j + 32, j + 48 in its four nibbles (csrc: ld_q4)
    codes = torch.stack([q[..., 0:16] | (q[..., 16:32] << 4), q[..., 32:48] | (q[..., 48:64] << 4)], -1)
    codes = codes.view(blocks, k, 32).contiguous()
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
    lo, hi = codes[..., 0::2], codes[..., 1::2]
    q = torch.cat([lo & 15, lo >> 4, hi & 15, hi >> 4], -1).float()  # [blocks, K, 64]
    d, m = dm[:, :, 0].float(), dm[:, :, 1].float()  # [blocks, K/32, 64]
    w = q * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)
    return w.transpose(1, 2).reshape(blocks * COLS, k)[:n]


def dequant_q8(codes: Tensor, d: Tensor, n: int) -> Tensor:
    """The [n, K] weights a `pack_q8` result stands for."""
    blocks, k, _ = codes.shape
    w = codes.float() * d.float().repeat_interleave(32, 1)  # [blocks, K, 64]
    return w.transpose(1, 2).reshape(blocks * COLS, k)[:n]


def packed_linear_q8(x: Tensor, packed: tuple[Tensor, Tensor], n: int) -> Tensor:
    """x [..., K] fp32 -> [..., n] through the 8-bit kernel (no bias; callers check `enabled()` and the row limit)."""
    shape = x.shape
    y = _EXT.packed_linear_q8(x.reshape(-1, shape[-1]).contiguous(), packed[0], packed[1], n)
    return y.view(*shape[:-1], n)


def packed_linear_q4(
    x: Tensor, packed: tuple[Tensor, Tensor], n: int, bias: Tensor | None, act8: bool = False
) -> Tensor:
    """x [..., K] fp32 -> [..., n] through the 4-bit kernel (callers check `enabled()` and the row limit). act8: round
    each row's inputs to 8 bits per group of 32 first and sum in integers (llama.cpp's Q4_1 x Q8_1; drafts use it:
    faster, and its numbers only propose); otherwise fp32 inputs against exactly the weights the codes stand for."""
    shape = x.shape
    y = _EXT.packed_linear_q4(x.reshape(-1, shape[-1]).contiguous(), packed[0], packed[1], n, bias, act8)
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
    """A draft's decoder block: the kernels plus plain loops for RoPE, SwiGLU and residuals (see csrc); the last
    argument is `act8`, as in `packed_linear_q4`."""
    return _EXT.draft_block(x.contiguous(), *args)


def draft_layers(x: Tensor, *args) -> Tensor:
    """Every decoder block of a 4-bit draft in one call (see csrc)."""
    return _EXT.draft_layers(x.contiguous(), *args)
