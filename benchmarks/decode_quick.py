"""Quick batch-1 decode check (64 new tokens, one chat prompt, best of 2 after a warm-up): native engine; argv[1] = quant.

OMP_NUM_THREADS=2 PYTHONPATH=$PWD python benchmarks/decode_quick.py [int8]   (LMLAB_KERNELS=0 for torch ops)
"""

import os
import sys
import time

import torch

from lmlab.core.bench import peak_rss_mb
from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.loader import load_model

quant = sys.argv[1] if len(sys.argv) > 1 else None
lm = load_model("smollm2-135m-instruct", dtype=torch.float32, quant=quant)
p = [encode_chat(lm.tokenizer, [{"role": "user", "content": "Explain why the sky is blue in two sentences."}])]
sp = SamplingParams(max_new_tokens=64, ignore_eos=True)
with torch.inference_mode():
    generate(lm.model, lm.tokenizer, p, sp)
    best = 1e9
    for _ in range(2):
        t = time.perf_counter()
        generate(lm.model, lm.tokenizer, p, sp)
        best = min(best, time.perf_counter() - t)
print(
    quant,
    os.environ.get("LMLAB_KERNELS"),
    f"{64 / best:.1f} tok/s rss {peak_rss_mb():.0f} MB",
    open("/proc/loadavg").read().split()[0],
)
