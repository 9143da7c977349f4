"""Quick batch-1 decode check of transformers fp32 generate, the same prompt and settings as decode_quick.py."""

import time

import torch
from transformers import AutoModelForCausalLM

from lmlab.core.bench import peak_rss_mb
from lmlab.core.engine import encode_chat
from lmlab.core.loader import load_tokenizer, resolve

path = resolve("smollm2-135m-instruct")
tok = load_tokenizer(path)
ids = torch.tensor([encode_chat(tok, [{"role": "user", "content": "Explain why the sky is blue in two sentences."}])])
hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
with torch.inference_mode():

    def g():
        return hf.generate(input_ids=ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)

    g()
    best = 1e9
    for _ in range(2):
        t = time.perf_counter()
        g()
        best = min(best, time.perf_counter() - t)
print(f"hf fp32 {64 / best:.1f} tok/s rss {peak_rss_mb():.0f} MB", open("/proc/loadavg").read().split()[0])
