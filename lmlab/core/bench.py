"""`lmlab bench decode`: native engine vs transformers' `generate`, same checkpoint, prompts and settings.

Each measurement runs in a fresh subprocess so that its peak RSS is its own. Greedy decoding of exactly
`new_tokens` tokens per row (EOS ignored on both sides) from the same chat-templated prompts.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import queue
import resource
import time
from pathlib import Path

import torch

from .errors import LmlabError
from .paths import atomic_write_text

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
    "What is the difference between a list and a tuple in Python?",
    "Give three tips for learning a new language.",
    "Summarize the plot of Romeo and Juliet.",
    "How does a refrigerator keep food cold?",
    "Translate 'good morning, how are you?' into French.",
    "List the planets of the solar system in order.",
]

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "int8": torch.bfloat16,
    "float32-nokernels": torch.float32,
    "bf16-weights": torch.float32,
}
EXTRA = {"int8-fp32": torch.float32, "q8": torch.float32, "q4": torch.float32}
"""Configurations by name (EXTRA: rows of `bench decode` only, not labelled by the quick report; native side only for
the last six): "int8" is weight-only int8 with bf16 activations
(torch's `_weight_int8pack_mm`), "float32-nokernels" is fp32 through torch's own ops (LMLAB_KERNELS=0), "bf16-weights"
is weight-only bf16 with fp32 activations through lmlab's kernels, "int8-fp32" is `--quant int8 --dtype float32`
(per-channel int8 codes through lmlab's kernels), "q8" / "q4" are `--quant q8` / `--quant q4` (GGUF-style Q8_0 /
Q4_1 groups, `core.quant.quantize_groups`)."""
QUANT = {"int8": "int8", "bf16-weights": "bf16", "int8-fp32": "int8", "q8": "q8", "q4": "q4"}


def _measure(impl: str, model: str, dtype: str, batch: int, new_tokens: int, repeats: int, q: mp.Queue) -> None:
    torch.manual_seed(0)
    if dtype == "float32-nokernels":
        import os

        os.environ["LMLAB_KERNELS"] = "0"  # this process only (each measurement is its own process)
    from .engine import SamplingParams, encode_chat, generate
    from .loader import load_model, load_tokenizer, resolve

    tok = load_tokenizer(resolve(model))
    prompts = [encode_chat(tok, [{"role": "user", "content": p}]) for p in (PROMPTS * batch)[:batch]]
    if impl == "native":
        lm = load_model(model, dtype={**DTYPES, **EXTRA}[dtype], quant=QUANT.get(dtype))
        params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        run = lambda: generate(lm.model, lm.tokenizer, prompts, params)  # noqa: E731
    elif impl == "llama.cpp":
        try:
            run = _llama_cpp_runner(model, prompts, new_tokens)
        except RuntimeError as e:
            q.put({"skipped": str(e)})
            return
    else:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf = AutoModelForCausalLM.from_pretrained(str(resolve(model)), dtype=DTYPES[dtype]).eval()
        T = max(len(p) for p in prompts)
        pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])  # left padding, as HF expects
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])

        def run():
            return hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )

    with torch.inference_mode():
        run()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    from . import kernels

    q.put(
        {
            "tokens_per_s": batch * new_tokens / best,
            "peak_rss_mb": peak_rss_mb(),
            "rss_mb": peak_rss_mb("VmRSS"),
            "kernels": kernels.isa(),
        }
    )


def _llama_cpp_runner(model: str, prompts: list[list[int]], new_tokens: int):
    """llama.cpp (the optional `llama-cpp-python` package) decoding the model's own GGUF file greedily, one prompt at a
    time (it has no batched generate), on as many threads as torch uses. Raises RuntimeError with the reason."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise RuntimeError(
            "llama-cpp-python is not installed (bash benchmarks/decode_vs_llamacpp.sh installs the 'llamacpp' extra; "
            "it builds llama.cpp from source, ~10 min on 2 quiet cores)"
        ) from e
    from .loader import ALIASES

    src = ALIASES.get(model)
    gguf = Path(src()) if callable(src) else Path(model)
    if gguf.suffix != ".gguf" or not gguf.exists():
        raise RuntimeError(f"{model} has no GGUF file to give llama.cpp")
    llm = Llama(
        model_path=str(gguf),
        n_ctx=max(len(p) for p in prompts) + new_tokens + 8,
        n_threads=torch.get_num_threads(),
        n_batch=512,
        verbose=False,
    )

    def run():
        for p in prompts:
            llm.reset()
            for i, _ in enumerate(llm.generate(p, top_k=1, temp=0.0, reset=True)):
                if i + 1 >= new_tokens:  # EOS ignored, as on the other rows
                    break

    return run


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory (field="VmRSS": its resident memory now, what the model holds once the
    load's transients are gone). VmHWM resets at exec, unlike ru_maxrss, which a spawned child inherits from its
    parent (the fallback off Linux, where the current figure is not available either)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    impl: str, model: str, dtype: str, batch: int, new_tokens: int, repeats: int, timeout: float = 3600.0
) -> dict:
    """One measurement in a fresh process. A child that dies (crash, OOM kill) or outlives `timeout` seconds gives
    a one-line LmlabError instead of a hang."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(impl, model, dtype, batch, new_tokens, repeats, q))
    p.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out = q.get(timeout=1.0)
                break
            except queue.Empty:
                if not p.is_alive() and q.empty():
                    raise LmlabError(
                        f"bench {impl} {dtype} batch {batch}: the measuring process died (exit code {p.exitcode})",
                        hint="run it alone to see its error (out of memory?)",
                    ) from None
                if time.monotonic() > deadline:
                    raise LmlabError(
                        f"bench {impl} {dtype} batch {batch}: no result after {timeout:.0f} s",
                        hint="fewer --new-tokens or --repeats",
                    ) from None
    finally:
        if p.is_alive():
            p.join(5)
            if p.is_alive():
                p.kill()
        p.join()
    return out


def run_decode_bench(
    model: str,
    batches: list[int],
    new_tokens: int,
    repeats: int,
    json_path: Path | None,
    pairs: list[tuple[str, str]] | None = None,
) -> list[dict]:
    """Rows per (batch, native dtype, HF dtype). Default pairs: each side's default dtype on this machine
    (native 'auto' = fp32 where lmlab's CPU kernels run, else bf16 where the CPU has native bf16; HF fp32), then
    both fp32, native fp32 without lmlab's kernels (the baseline they are measured against), native weight-only
    bf16, both bf16, then the opt-in weight-only modes (not bit-exact: int8 with bf16 and with fp32 activations,
    Q8_0 and Q4_1 groups) against HF fp32, and at batch 1 llama.cpp on the same GGUF file (skipped, with the reason,
    where llama-cpp-python is not installed). Each HF configuration is measured once per batch size; every row
    gives its process's peak RSS."""
    from .backends import auto_dtype
    from .loader import resolve

    resolve(model)  # convert/cache once, before timing
    auto = "bfloat16" if auto_dtype() == torch.bfloat16 else "float32"
    pairs = pairs or list(
        dict.fromkeys(
            [
                (auto, "float32"),
                ("float32", "float32"),
                ("float32-nokernels", "float32"),
                ("bf16-weights", "float32"),
                ("bfloat16", "bfloat16"),
                ("int8", "float32"),
                ("int8-fp32", "float32"),
                ("q8", "float32"),
                ("q4", "float32"),
                ("llama.cpp", "float32"),
            ]
        )
    )
    rows = []
    print(
        f"{'batch':>5} {'native':>17} {'hf':>9} {'native tok/s':>13} {'hf tok/s':>9} {'speedup':>8} {'rss MB':>7} {'end rss':>7} {'hf rss MB':>9}"
    )
    for batch in batches:
        hf: dict[str, dict] = {}
        for nd, hd in pairs:
            impl = "llama.cpp" if nd == "llama.cpp" else "native"
            if impl == "llama.cpp" and batch != 1:
                continue  # one sequence at a time: its batch-1 figure is the comparison
            n = _measure_or_skip(impl, model, nd, batch, new_tokens, repeats)
            if "skipped" not in n and hd not in hf:
                hf[hd] = _measure_or_skip("hf", model, hd, batch, new_tokens, repeats)
            h = n if "skipped" in n else hf[hd]
            if "skipped" in h:
                rows.append({"model": model, "batch": batch, "native_dtype": nd, "skipped": h["skipped"]})
                print(f"{batch:>5} {nd:>17} skipped: {h['skipped']}", flush=True)
                _write_rows(json_path, rows)
                continue
            row = {
                "model": model,
                "batch": batch,
                "native_dtype": nd,
                "hf_dtype": hd,
                "new_tokens": new_tokens,
                "native_tokens_per_s": round(n["tokens_per_s"], 2),
                "hf_tokens_per_s": round(h["tokens_per_s"], 2),
                "speedup_vs_hf": round(n["tokens_per_s"] / h["tokens_per_s"], 3),
                "peak_rss_mb": round(n["peak_rss_mb"], 1),
                "rss_mb": round(n["rss_mb"], 1) if "rss_mb" in n else None,
                "hf_peak_rss_mb": round(h["peak_rss_mb"], 1),
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "kernels": n.get("kernels"),
            }
            rows.append(row)
            print(
                f"{batch:>5} {nd:>17} {hd:>9} {row['native_tokens_per_s']:>13.1f} {row['hf_tokens_per_s']:>9.1f} "
                f"{row['speedup_vs_hf']:>7.2f}x {row['peak_rss_mb']:>7.0f} "
                f"{row['rss_mb'] or float('nan'):>7.0f} {row['hf_peak_rss_mb']:>9.0f}",
                flush=True,
            )
            _write_rows(json_path, rows)
    _write_rows(json_path, rows)
    return rows


def _measure_or_skip(impl: str, model: str, dtype: str, batch: int, new_tokens: int, repeats: int) -> dict:
    """measure(), with a child that crashed or hung turned into a skipped row (llama.cpp's AMX path segfaults on some
    Sapphire Rapids hosts, llama.cpp#20824): one configuration's failure must not discard the rows already measured."""
    try:
        return measure(impl, model, dtype, batch, new_tokens, repeats)
    except LmlabError as e:
        return {"skipped": str(e)}


def _write_rows(json_path: Path | None, rows: list[dict]) -> None:
    """Rewritten after every row, atomically, so a stopped benchmark keeps what it measured."""
    if json_path is not None:
        atomic_write_text(Path(json_path), json.dumps(rows, indent=2))
