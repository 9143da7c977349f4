"""The foundation's own report section: is the native engine exact, and how fast is it against transformers?"""

from __future__ import annotations

import torch

from .report import ReproduceContext, Section, Verdict, markdown_table

SHORT = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "int8": "int8",
    "float32-nokernels": "fp32 (no kernels)",
    "bf16-weights": "bf16 weights",
}
"""Plot labels for every configuration `lmlab.core.bench.DTYPES` knows."""


def run(ctx: ReproduceContext) -> Section:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from transformers import AutoModelForCausalLM

    from .backends import auto_dtype
    from .bench import run_decode_bench
    from .loader import load_model

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
    del hf
    # quick measures fewer configurations, but the headline one exactly as the full benchmark does (128 tokens,
    # best of 2): a shorter run weighs the prefill more and gave a verdict the full figure contradicted
    new_tokens = 128
    auto = "bfloat16" if auto_dtype() == torch.bfloat16 else "float32"
    pairs = list(dict.fromkeys([(auto, "float32"), ("float32", "float32")])) if ctx.quick else None
    rows = run_decode_bench(ctx.model, [1] if ctx.quick else [1, 8], new_tokens, 2, ctx.out_dir / "decode.json", pairs)
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"b{r['batch']} {SHORT[r['native_dtype']]} vs {SHORT[r['hf_dtype']]}" for r in rows]
    ax.bar([x - 0.2 for x in range(len(rows))], [r["native_tokens_per_s"] for r in rows], 0.4, label="lmlab native")
    ax.bar(
        [x + 0.2 for x in range(len(rows))], [r["hf_tokens_per_s"] for r in rows], 0.4, label="transformers generate"
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("new tokens / s")
    ax.legend()
    fig.tight_layout()
    png = ctx.out_dir / "decode.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    b1 = [r for r in rows if r["batch"] == 1]
    default = b1[0]["speedup_vs_hf"]  # native 'auto' dtype vs transformers' default
    fp32 = next(r["speedup_vs_hf"] for r in b1 if r["native_dtype"] == r["hf_dtype"] == "float32")
    int8 = next((r["speedup_vs_hf"] for r in b1 if r["native_dtype"] == "int8"), None)
    bf16w = next((r["speedup_vs_hf"] for r in b1 if r["native_dtype"] == "bf16-weights"), None)
    md = (
        f"Native Llama-family engine on `{ctx.model}` (dequantized GGUF, cached as safetensors).\n\n"
        f"Max |logit difference| against transformers' LlamaForCausalLM on the same weights (fp32, {ids.shape[1]} tokens): "
        f"**{diff:.2e}**.\n\nGreedy decoding, {new_tokens} new tokens, native engine vs `generate` "
        f"(same prompts and settings, each in its own process):\n\n"
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
        {"max_logit_diff": diff, "decode": rows},
        [
            Verdict("native logits equal transformers' on the same weights", f"max |diff| {diff:.1e}", diff < 1e-3),
            Verdict(
                "issue target: native fp32 decode ≥ 2.0x transformers fp32 at batch 1 (128 new tokens, best of 2)",
                f"{fp32:.2f}x",
                fp32 >= 2.0,
            ),
            Verdict("default dtypes (native auto vs transformers fp32), batch 1", f"{default:.2f}x", default >= 2.0),
            Verdict(
                "opt-in bf16 weights, fp32 activations ≥ 2.0x transformers fp32",
                f"{bf16w:.2f}x" if bf16w is not None else "not measured in quick mode",
                bf16w >= 2.0 if bf16w is not None else None,
            ),
            Verdict(
                "opt-in int8 weights (not bit-exact) ≥ 2.0x transformers fp32",
                f"{int8:.2f}x" if int8 is not None else "not measured in quick mode",
                int8 >= 2.0 if int8 is not None else None,
            ),
        ],
    )
