"""Teacher-forced top-1 agreement of the cached SpS draft LM with the target on the Spec-Bench benchmark prompts.

For each category's first question: the target answers greedily (64 tokens); on prompt + answer, compare the
draft's argmax (full vocabulary, and restricted to its trained token subset) with the target's next token.
Run: HF_HUB_OFFLINE=1 python benchmarks/specdec_draft_agreement.py
"""

import torch

torch.set_num_threads(2)
from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.loader import load_model
from lmlab.specdec.bench import load_questions
from lmlab.specdec.registry import draft_vocab_of, find_trained, load_draft

lm = load_model(dtype="float32")
m = lm.model
d = load_draft(lm).model
vocab = draft_vocab_of(find_trained(lm, "draft"))
print(
    "draft layers", d.cfg.num_layers, "hidden", d.cfg.hidden_size, "vocab subset", None if vocab is None else len(vocab)
)
qs = load_questions(None, 1, ())
tot = agree = agree_sub = insub = 0
with torch.inference_mode():
    for q in qs:
        ids = encode_chat(lm.tokenizer, [{"role": "user", "content": q["text"]}])
        g = generate(m, lm.tokenizer, [ids], SamplingParams(max_new_tokens=64))[0].token_ids
        full = torch.tensor([ids + g])
        tl = m(full, m.new_cache(1, full.shape[1]), logits="all").logits[0]
        dl = d(full, d.new_cache(1, full.shape[1]), logits="all").logits[0]
        P = len(ids)
        tgt = tl[P - 1 : -1].argmax(-1)
        dr = dl[P - 1 : -1].argmax(-1)
        sub = dl[P - 1 : -1].clone()
        mask = torch.full((sub.shape[-1],), True)
        mask[vocab] = False
        sub[:, mask] = -1e9
        drs = sub.argmax(-1)
        tot += len(tgt)
        agree += (tgt == dr).sum().item()
        agree_sub += (tgt == drs).sum().item()
        insub += (~mask[tgt]).sum().item()
        print(q["category"], "%.2f %.2f" % ((tgt == dr).float().mean(), (tgt == drs).float().mean()))
print(
    "overall draft top1 %.3f, with subset %.3f, target token in subset %.3f"
    % (agree / tot, agree_sub / tot, insub / tot)
)
