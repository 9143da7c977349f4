"""Why the drafts accept what they accept: the target's own confidence along its greedy answers, and how often the
trained drafts agree with it, split by that confidence.

For the first Spec-Bench question of each category the target answers greedily (128 tokens); teacher-forced on
prompt + answer we record, at every answer position, the target's top-1 probability and whether the cached draft
LM (SpS) and the EAGLE head (depth 1: the target's feature at t and token t+1 predict token t+2) pick the target's
token. Acceptance of a cheap draft concentrates where the target is confident; the share of such positions bounds
what any small draft can reach on this target.

Run: HF_HUB_OFFLINE=1 python benchmarks/specdec_target_confidence.py --json benchmarks/results/specdec_target_confidence.json
"""

import argparse
import json

import torch

from lmlab.core.engine import SamplingParams, chunked_forward, encode_chat, generate
from lmlab.core.loader import load_model
from lmlab.core.paths import atomic_write_text
from lmlab.specdec.bench import load_questions
from lmlab.specdec.eagle import load_head, subset_head, subset_logits
from lmlab.specdec.registry import draft_vocab_of, find_trained, load_draft

BUCKETS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.01))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = load_model(dtype="float32")
    m, tok = lm.model, lm.tokenizer
    draft = load_draft(lm).model
    dvocab = draft_vocab_of(find_trained(lm, "draft"))
    head = load_head(find_trained(lm, "eagle"), m)
    rows = subset_head(m.lm_head, head.vocab)
    insub = torch.zeros(m.cfg.vocab_size, dtype=torch.bool)
    insub[head.vocab] = True  # the drafts can only propose tokens of their frequency-ranked subset (FR-Spec)
    per_cat, pos = {}, []  # pos: (p_max, draft agrees, head agrees, token in the subset) per answer position
    with torch.inference_mode():
        for q in load_questions(None, 1):
            ids = encode_chat(tok, [{"role": "user", "content": q["text"]}])
            out = generate(m, tok, [ids], SamplingParams(max_new_tokens=args.new_tokens))[0].token_ids
            full = torch.tensor([ids + out])
            P, T = len(ids), full.shape[1]
            fo = chunked_forward(m, full, m.new_cache(1, T), logits="all")
            probs = fo.logits[0].softmax(-1)
            pmax, target = probs.max(-1)  # target[t]: the target's token after position t
            dl = draft(full, draft.new_cache(1, T), logits="all").logits[0]
            if dvocab is not None:
                keep = torch.full((dl.shape[-1],), float("-inf"))
                keep[dvocab] = 0.0
                dl = dl + keep
            d_ok = dl.argmax(-1) == target
            # head: (feature t, token t+1) -> feature t+1 -> token t+2; compare with the target's token after t+1
            hh = head(head.fuse_in(fo.last_hidden[:, :-1]), full[:, 1:], m.embed, head.body.new_cache(1, T))
            h_tok = head.vocab[subset_logits(hh[0], rows).argmax(-1)]
            h_ok = torch.cat([torch.zeros(1, dtype=torch.bool), h_tok == target[1:]])  # h_ok[t+1]: predicted at t
            ans = range(P, T - 1)  # positions whose next token is an answer token
            rs = [(float(pmax[t]), bool(d_ok[t]), bool(h_ok[t]), bool(insub[target[t]])) for t in ans if t >= 1]
            pos += rs
            per_cat[q["category"]] = {
                "mean_pmax": sum(r[0] for r in rs) / len(rs),
                "draft_top1": sum(r[1] for r in rs) / len(rs),
                "head_top1": sum(r[2] for r in rs) / len(rs),
                "frac_pmax_below_0.5": sum(r[0] < 0.5 for r in rs) / len(rs),
                "subset_coverage": sum(r[3] for r in rs) / len(rs),
            }
    buckets = []
    for lo, hi in BUCKETS:
        b = [r for r in pos if lo <= r[0] < hi]
        buckets.append(
            {
                "target_pmax": f"[{lo}, {min(hi, 1.0)}]",
                "share": len(b) / len(pos),
                "draft_top1": sum(r[1] for r in b) / max(1, len(b)),
                "head_top1": sum(r[2] for r in b) / max(1, len(b)),
                "subset_coverage": sum(r[3] for r in b) / max(1, len(b)),
            }
        )
    res = {
        "positions": len(pos),
        "mean_pmax": sum(r[0] for r in pos) / len(pos),
        "draft_top1": sum(r[1] for r in pos) / len(pos),
        "head_top1": sum(r[2] for r in pos) / len(pos),
        "subset_coverage": sum(r[3] for r in pos) / len(pos),
        "by_confidence": buckets,
        "per_category": per_cat,
    }
    print(
        f"{len(pos)} answer positions; target mean top-1 probability {res['mean_pmax']:.3f}; "
        f"draft LM agrees {res['draft_top1']:.3f}, EAGLE head (depth 1) {res['head_top1']:.3f}; "
        f"the target's token is in the drafts' {len(head.vocab)}-token subset at {res['subset_coverage']:.3f}"
    )
    print(
        "| target top-1 prob | share of positions | draft LM top-1 | EAGLE head top-1 | token in draft subset |\n|---|---|---|---|---|"
    )
    for b in buckets:
        print(
            f"| {b['target_pmax']} | {b['share']:.2f} | {b['draft_top1']:.2f} | {b['head_top1']:.2f} | {b['subset_coverage']:.2f} |"
        )
    if args.json:
        from pathlib import Path

        atomic_write_text(Path(args.json), json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
