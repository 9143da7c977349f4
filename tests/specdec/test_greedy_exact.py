"""Greedy speculative decoding is token-identical to plain native decoding (batched rows included)."""

from __future__ import annotations

import pytest
import torch

from lmlab.core import kernels
from lmlab.core.engine import SamplingParams, encode_chat, generate, stream_generate
from lmlab.specdec import DraftModel, PromptLookup, SpecStats, make_drafter, spec_generate, spec_stream
from lmlab.specdec.eagle import EagleDrafter, EagleHead
from lmlab.specdec.train import init_draft_lm
from lmlab.specdec.verify import Draft

QUESTIONS = [
    "Summarize in one sentence: The cat sat on the mat. The cat liked the mat because the mat was warm.",
    "Write a Python function that returns the squares of a list of numbers.",
    "Translate to French: Good morning, how are you today?",
]


@pytest.fixture(scope="module")
def prompts(smollm):
    return [encode_chat(smollm.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def reference(smollm, prompts):
    return generate(smollm.model, smollm.tokenizer, prompts, SamplingParams(max_new_tokens=40))


def assert_same_greedy(model, prompt, got, ref):
    """Through lmlab's kernels the verification pass is batch-invariant: greedy speculative output is token-identical
    to plain decoding, and any difference is a bug. On torch's path (LMLAB_KERNELS=0) a k-token pass and a 1-token step
    sum in different orders (~1e-5 apart in fp32), so identity holds up to near-ties: at the first difference the two
    tokens' logits after the common prefix must be within that rounding (1e-3) of each other."""
    if got == ref:
        return
    assert not kernels.enabled(), "the kernel path is batch-invariant: a differing token is a bug"
    i = next((j for j, (a, b) in enumerate(zip(got, ref)) if a != b), None)
    assert i is not None, f"one output is a prefix of the other: {len(got)} vs {len(ref)} tokens"
    with torch.inference_mode():
        logits = model(torch.tensor([list(prompt) + ref[:i]]), model.new_cache(1, len(prompt) + i + 1)).logits[0]
    assert abs(logits[got[i]] - logits[ref[i]]).item() < 1e-3, (i, got[i], ref[i])


class CheapPasses:
    """A pass-cost curve (`specdec.cost.PassCost`'s interface) on which wide passes and drafting are nearly free, so
    that the cost-aware tree always has something to verify, whatever this machine's speed."""

    def __call__(self, n: float, ctx: int) -> float:
        return 1.0 + 0.01 * max(0.0, n - 1)

    def step_seconds(self, ctx: int) -> float:
        return 1e9


def make(kind, lm):
    if kind == "pld":
        return PromptLookup()
    if kind == "selfq4":  # the target's own 4-bit weights: long accepted runs, rare rejections
        return make_drafter(lm, "selfq4")
    if kind == "sps":  # an untrained 2-layer draft: poor proposals exercise rejections everywhere
        return DraftModel(init_draft_lm(lm.model, (0, -1)).eval(), vocab=torch.arange(4096))
    torch.manual_seed(0)
    n = lm.model.cfg.num_layers
    layers = (2, n // 2, n) if kind == "eagle3" else ()  # EAGLE-3: fused low/mid/final hidden states
    head = EagleHead(lm.model.cfg, torch.arange(4096), feature_layers=layers).eval()
    if kind.endswith("_auto"):  # cost-aware tree size; kappa starts optimistic, so trees are verified
        d = EagleDrafter(head, lm.model, topk=3, depth=3, total=None, lookup=kind.startswith("eagle_pld"))
        d.cost = CheapPasses()  # a fixed cost curve: the measured one depends on this machine's timing and load
        return d
    return EagleDrafter(head, lm.model, topk=3, depth=3, total=6, lookup=kind == "eagle_pld")


@pytest.mark.parametrize(
    "kind", ["pld", "sps", "eagle", "eagle_pld", "eagle3", "eagle_auto", "eagle_pld_auto", "selfq4"]
)
def test_batched_greedy_identical(smollm, prompts, reference, kind):
    st = SpecStats()
    out = spec_generate(
        smollm.model, smollm.tokenizer, make(kind, smollm), prompts, SamplingParams(max_new_tokens=40), stats=st
    )
    for p, o, r in zip(prompts, out, reference):
        assert_same_greedy(smollm.model, p, o.token_ids, r.token_ids)
        if o.token_ids == r.token_ids:
            assert o.text == r.text and o.finish_reason == r.finish_reason
    assert st.passes > 0 and st.proposed > 0


class OracleTree:
    """Knows the reference continuation; hides it on the *last* branch of a tree full of decoys, so that
    accepting it requires moving K/V slots (cache.gather_slots). A wrong compaction corrupts later tokens."""

    name, max_nodes = "oracle", 16

    def __init__(self, refs, prompt_lens):
        self.refs, self.lens = refs, prompt_lens

    def begin(self, prompts, hidden, capacity):
        self.rows = list(range(len(prompts)))

    def propose(self, ctx, params, gen):
        out = []
        for r, c in zip(self.rows, ctx):
            done = len(c) - self.lens[r]
            truth = self.refs[r][done : done + 3]
            decoy = [(t + 7) % 1000 + 5 for t in truth]
            # root -> decoy chain (nodes 1..3), root -> truth chain (4..), each truth node also gets a decoy child
            toks, parents = list(decoy), list(range(len(decoy)))
            prev = 0
            for t, d in zip(truth, decoy):
                toks += [d, t]
                parents += [prev, prev]
                prev = len(toks)
            out.append(Draft(toks, parents))
        return out

    def update(self, ctx, drafts, paths, hidden):
        pass

    def keep(self, index):
        self.rows = [self.rows[i] for i in index.tolist()]


def test_tree_branch_compaction(smollm, prompts, reference):
    refs = [r.token_ids for r in reference]
    st = SpecStats()
    out = spec_generate(
        smollm.model,
        smollm.tokenizer,
        OracleTree(refs, [len(p) for p in prompts]),
        prompts,
        SamplingParams(max_new_tokens=40),
        stats=st,
    )
    for p, o, r in zip(prompts, out, refs):
        assert_same_greedy(smollm.model, p, o.token_ids, r)
    assert st.mean_accepted_tokens > 3.5  # 3 accepted from the last branch + the bonus token, nearly every pass


def test_stream_events_identical(smollm, prompts):
    """Same StreamEvents (deltas, stop strings, finish reasons) as engine.stream_generate."""
    p = SamplingParams(max_new_tokens=30, stop=["list"])
    ref = list(stream_generate(smollm.model, smollm.tokenizer, prompts, p))
    got = list(spec_stream(smollm.model, smollm.tokenizer, PromptLookup(), prompts, p))
    for r in range(len(prompts)):
        assert [(e.token_id, e.text, e.finish_reason) for e in ref if e.row == r] == [
            (e.token_id, e.text, e.finish_reason) for e in got if e.row == r
        ]
    assert any(e.finish_reason == "stop" for e in got)
