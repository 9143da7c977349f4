"""The foundation's own report section: is the native engine exact, and how fast is it against transformers?

Speed verdicts come from paired, interleaved timings in one process (each repeat times transformers' `generate` and
every native configuration back to back on the same prompt), so load drifts on a shared machine hit both sides of a
ratio alike, and the interval is the range of the per-repeat ratios. Full mode also runs `lmlab bench decode`'s
table (each measurement in its own process, with its peak RSS, batch 8 and the no-kernels baseline)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .report import (
    DETERMINISTIC,
    ReproduceContext,
    Section,
    Verdict,
    markdown_table,
    repeat_range,
    verdict_from_interval,
)

SHORT = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "int8": "int8",
    "float32-nokernels": "fp32 (no kernels)",
    "bf16-weights": "bf16 weights",
}
"""Plot labels for every configuration `lmlab.core.bench.DTYPES` knows."""

NEW_TOKENS = 128  # as the full benchmark: a shorter run weighs the prefill more and once gave a contrary verdict
REPEATS = 5  # paired repeats per configuration: their range is a 94 % distribution-free interval for the median
TARGET = 2.0  # the speed target (native / transformers tokens per second)


def paired_timings(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat for each named run, interleaved (run a, b, c, a, b, c, ...) after one warm-up each."""
    for fn in runs.values():
        fn()
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t0)
    return out


def speed_verdicts(times: dict[str, list[float]], auto: str, quick: bool) -> list[Verdict]:
    """The section's speed claims from `paired_timings` output ("hf" is transformers fp32; the other keys are
    native configurations). The same four claims in every mode: a configuration not timed is "not tested"."""

    def claim(text: str, key: str) -> Verdict:
        if key not in times:
            why = "not measured in quick mode (the full `lmlab reproduce` times it)" if quick else "not measured"
            return Verdict(text, why, None)
        ratios = [h / n for h, n in zip(times["hf"], times[key])]  # native speed / transformers speed, per repeat
        med, lo, hi, cover = repeat_range(ratios)
        if len(ratios) < 3:  # the range of one or two repeats is no interval
            return Verdict(
                text,
                f"{med:.2f}x from {len(ratios)} repeat(s)",
                seeds=f"{len(ratios)} repeat(s)",
                interval=(lo, hi),
                status="inconclusive",
            )
        return verdict_from_interval(
            text,
            lo,
            hi,
            TARGET,
            seeds=f"greedy (no sampling); {len(ratios)} paired timing repeats",
            measured=f"{med:.2f}x median of {len(ratios)} per-repeat ratios (range [{lo:.2f}, {hi:.2f}]: "
            f"{cover:.0%} distribution-free interval for the median)",
        )

    return [
        claim(
            f"issue target: native fp32 decode ≥ {TARGET}x transformers fp32 at batch 1 ({NEW_TOKENS} new tokens)",
            "float32",
        ),
        claim(f"default dtypes (native auto = {auto} vs transformers fp32) ≥ {TARGET}x at batch 1", auto),
        claim(f"opt-in bf16 weights, fp32 activations ≥ {TARGET}x transformers fp32", "bf16-weights"),
        claim(f"opt-in int8 weights (not bit-exact) ≥ {TARGET}x transformers fp32", "int8"),
    ]


def exactness_verdict(diff: float, n_tokens: int) -> Verdict:
    return Verdict(
        "native logits equal transformers' on the same weights",
        f"max |diff| {diff:.1e} over {n_tokens} tokens x the vocabulary (fp32; bound 1e-3)",
        diff < 1e-3,
        seeds=f"{DETERMINISTIC} (fixed weights and input, no sampling)",
        interval="exact (a maximum, not an estimate)",
    )


def _hf_runner(hf, ids: list[int], new_tokens: int) -> Callable[[], object]:
    x = torch.tensor([ids])
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    return lambda: hf.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )


def run(ctx: ReproduceContext) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .backends import auto_dtype
    from .bench import DTYPES, PROMPTS, QUANT, run_decode_bench
    from .engine import SamplingParams, encode_chat, generate
    from .loader import load_model

    hf_logging.set_verbosity_error()
    lm = load_model(ctx.model, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(str(lm.path), dtype=torch.float32).eval()
    text = "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; 12345 + 678 ="
    ids = torch.tensor([lm.tokenizer(text).input_ids])
    with torch.no_grad():
        diff = (
            (lm.model(ids, lm.model.new_cache(1, ids.shape[1]), logits="all").logits - hf(ids).logits)
            .abs()
            .max()
            .item()
        )
    auto = "bfloat16" if auto_dtype() == torch.bfloat16 else "float32"
    configs = list(dict.fromkeys(["float32", auto] + ([] if ctx.quick else ["bf16-weights", "int8"])))
    prompt = encode_chat(lm.tokenizer, [{"role": "user", "content": PROMPTS[0]}])
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    runs: dict[str, Callable[[], object]] = {"hf": _hf_runner(hf, prompt, NEW_TOKENS)}
    for c in configs:
        m = load_model(ctx.model, dtype=DTYPES[c], quant=QUANT.get(c))
        runs[c] = lambda m=m: generate(m.model, m.tokenizer, [prompt], params)
    torch.manual_seed(0)
    with torch.inference_mode():
        times = paired_timings(runs, REPEATS)
    del hf
    paired = [
        {
            "native": c,
            "native_tokens_per_s": NEW_TOKENS / min(times[c]),
            "hf_fp32_tokens_per_s": NEW_TOKENS / min(times["hf"]),
            **dict(
                zip(
                    ("median_ratio", "min_ratio", "max_ratio"),
                    repeat_range([h / n for h, n in zip(times["hf"], times[c])])[:3],
                )
            ),
        }
        for c in configs
    ]
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"b1 {SHORT[r['native']]} vs fp32" for r in paired]
    ax.bar([x - 0.2 for x in range(len(paired))], [r["native_tokens_per_s"] for r in paired], 0.4, label="lmlab native")
    ax.bar(
        [x + 0.2 for x in range(len(paired))],
        [r["hf_fp32_tokens_per_s"] for r in paired],
        0.4,
        label="transformers generate",
    )
    ax.set_xticks(range(len(paired)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("new tokens / s (best repeat)")
    ax.legend()
    fig.tight_layout()
    png = ctx.out_dir / "decode.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    md = (
        f"Native Llama-family engine on `{ctx.model}` (dequantized GGUF, cached as safetensors).\n\n"
        f"Max |logit difference| against transformers' LlamaForCausalLM on the same weights (fp32, {ids.shape[1]} tokens): "
        f"**{diff:.2e}**.\n\nGreedy decoding at batch 1, {NEW_TOKENS} new tokens, native engine vs transformers' "
        f"`generate` (fp32), {REPEATS} paired repeats in one process, interleaved so that load drifts hit both sides "
        "of each ratio; ratio = native / transformers tokens per second in the same repeat:\n\n"
        + markdown_table(paired, floatfmt=".2f")
    )
    rows = []
    if not ctx.quick:  # the benchmark's own table: one process per measurement (peak RSS), batch 1 and 8
        rows = run_decode_bench(ctx.model, [1, 8], NEW_TOKENS, 2, ctx.out_dir / "decode.json")
        md += (
            "\n`lmlab bench decode` (each measurement in its own process, best of 2; not used for the verdicts):\n\n"
            + markdown_table(
                rows,
                [
                    "batch",
                    "native_dtype",
                    "hf_dtype",
                    "native_tokens_per_s",
                    "hf_tokens_per_s",
                    "speedup_vs_hf",
                    "peak_rss_mb",
                ],
                ".2f",
            )
        )
    return Section(
        "core",
        "Foundation: native engine",
        md,
        [png],
        {"max_logit_diff": diff, "paired_seconds": times, "paired": paired, "decode": rows},
        [exactness_verdict(diff, ids.shape[1]), *speed_verdicts(times, auto, ctx.quick)],
    )
