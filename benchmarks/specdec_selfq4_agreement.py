"""How often a 4-bit self-draft (`--speculative selfq4`) picks the target's own next token, teacher-forced.

For each model: sequences the target writes itself (sampled at T = 1 from its BOS token, or the Spec-Bench prompts'
greedy answers for a chat model), then the top-1 agreement between the target and its quantized copy at every
position. The embedded SmolLM2 comes from a Q4_1 / Q8_0 GGUF file, so its draft has the file's own codes; a model
trained here in fp32 (shepherd's policy) is a real 4-bit approximation.
Run: HF_HUB_OFFLINE=1 python benchmarks/specdec_selfq4_agreement.py [--model PATH ...] [--json benchmarks/results/specdec_selfq4_agreement.json]
"""

import argparse
import json

import torch

from lmlab.core.engine import SamplingParams, chunked_forward, encode_chat, generate
from lmlab.core.loader import load_model
from lmlab.specdec.bench import load_questions
from lmlab.specdec.drafters import quantized_self_draft


def agreement(lm, seqs: list[list[int]], start: list[int]) -> float:
    m = lm.model
    d = quantized_self_draft(m)
    hit = tot = 0
    with torch.inference_mode():
        for s, p in zip(seqs, start):
            ids = torch.tensor([s])
            a = chunked_forward(m, ids, m.new_cache(1, len(s)), logits="all").logits[0, p - 1 : -1].argmax(-1)
            b = chunked_forward(d, ids, d.new_cache(1, len(s)), logits="all").logits[0, p - 1 : -1].argmax(-1)
            hit += int((a == b).sum())
            tot += len(a)
    return hit / tot, tot


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--model", action="append", default=None, help="model alias or path (repeatable; default: the embedded SmolLM2)"
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.model or ["smollm2-135m-instruct"]:
        lm = load_model(name, dtype="float32")
        tok = lm.tokenizer
        if tok.chat_template:
            prompts = [encode_chat(tok, [{"role": "user", "content": q["text"]}]) for q in load_questions(None, 1)]
            outs = generate(lm.model, tok, prompts, SamplingParams(max_new_tokens=128))
        else:
            bos = lm.config.bos_token_id if lm.config.bos_token_id is not None else 0
            prompts = [[bos]] * 16
            outs = generate(
                lm.model, tok, prompts, SamplingParams(max_new_tokens=96, temperature=1.0, seed=0, ignore_eos=True)
            )
        seqs = [p + o.token_ids for p, o in zip(prompts, outs)]
        a, n = agreement(lm, seqs, [len(p) for p in prompts])
        rows.append(
            {
                "model": name,
                "positions": n,
                "top1_agreement": a,
                "hidden_size": lm.config.hidden_size,
                "layers": lm.config.num_layers,
            }
        )
        print(f"{name}: 4-bit self-draft agrees with the target's top-1 at {a:.4f} of {n} positions")
    if args.json:
        from pathlib import Path

        from lmlab.core.paths import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
