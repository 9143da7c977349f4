"""Side by side, for the weights of one SmolLM2-135M decoding step (30 x qkv, o, gate|up, down; random values): the
linear-layer candidates for batch-1 decoding on this CPU. lmlab's kernels (fp32, bf16, per-channel int8, Q8_0 and
Q4_1 groups) against torch's F.linear, `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`, and `sum` (the
memory stream alone). Process CPU time, best of 5, so that a shared machine's other jobs inflate no figure; run
with OMP_NUM_THREADS=1 for one core's view.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/kernels_candidates.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from lmlab.core import kernels

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30


def bench(name: str, f, weights: int, reps: int = 5) -> None:
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    print(f"{name:22s} {best * 1e3:7.1f} ms  {weights / best / 1e9:5.2f} Gweights/s", flush=True)


def main() -> None:
    print(
        "kernels:",
        kernels.isa(),
        "| threads:",
        torch.get_num_threads(),
        "| load:",
        open("/proc/loadavg").read().split()[0],
    )
    ws = [torch.randn(n, k) for n, k in SHAPES]
    nw = sum(w.numel() for w in ws)
    xs = {k: torch.randn(1, k) for k in (576, 1536)}
    xb = {k: v.bfloat16() for k, v in xs.items()}
    bench("sum (stream only)", lambda: [w.sum() for w in ws], nw)
    bench("F.linear fp32", lambda: [F.linear(xs[w.shape[1]], w) for w in ws], nw)
    bench("lmlab fp32", lambda: [kernels.packed_linear(xs[w.shape[1]], w, w.shape[0], None) for w in ws], nw)
    wb = [w.bfloat16() for w in ws]
    bench("lmlab bf16 weights", lambda: [kernels.packed_linear(xs[w.shape[1]], w, w.shape[0], None) for w in wb], nw)
    i8 = [((w / (w.abs().amax(1, keepdim=True) / 127)).round().to(torch.int8), w.abs().amax(1) / 127) for w in ws]
    bench(
        "lmlab int8 (channel)",
        lambda: [kernels.packed_linear(xs[q.shape[1]], q, q.shape[0], None, s) for q, s in i8],
        nw,
    )
    bench("int8pack_mm fp32", lambda: [torch.ops.aten._weight_int8pack_mm(xs[q.shape[1]], q, s) for q, s in i8], nw)
    i8b = [(q, s.bfloat16()) for q, s in i8]
    bench("int8pack_mm bf16", lambda: [torch.ops.aten._weight_int8pack_mm(xb[q.shape[1]], q, s) for q, s in i8b], nw)
    q8 = [(kernels.pack_q8(w), w.shape) for w in ws]
    bench("lmlab Q8_0", lambda: [kernels.packed_linear_q8(xs[s[1]], p, s[0]) for p, s in q8], nw)
    q4 = [(kernels.pack_q4(w), w.shape) for w in ws]
    bench("lmlab Q4_1", lambda: [kernels.packed_linear_q4(xs[s[1]], p, s[0], None) for p, s in q4], nw)
    gs, packs = 32, []
    for w in ws:  # torch's int4 convention: w = (q - 8) * scale + zero, groups of 32 inputs
        n, k = w.shape
        g = w.view(n, k // gs, gs)
        lo, sc = g.amin(-1), ((g.amax(-1) - g.amin(-1)) / 15).clamp_min(1e-8)
        q = ((g - lo[..., None]) / sc[..., None]).round().clamp(0, 15).to(torch.int32).view(n, k)
        sz = torch.stack([sc, lo + 8 * sc], -1).transpose(0, 1).contiguous()
        packs.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2), sz, k))
    bench(
        "int4pack_mm fp32",
        lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xs[k], p, gs, z) for p, z, k in packs],
        nw,
    )
    pb = [(p, z.bfloat16(), k) for p, z, k in packs]
    bench(
        "int4pack_mm bf16", lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xb[k], p, gs, z) for p, z, k in pb], nw
    )


if __name__ == "__main__":
    main()
