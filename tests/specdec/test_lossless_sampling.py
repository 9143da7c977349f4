"""Sampling is lossless: tokens emitted by speculative decoding follow the target's distribution exactly.

Tiny random target and draft (vocab 8) so the target's joint distribution of the first two tokens and the
marginal of the third can be enumerated. A batch of thousands of rows (two prompts of different lengths,
so rows accept different numbers of tokens per pass) is decoded at temperature 1; chi-square tests must
not reject, the distance must shrink with more samples, and a deliberately broken acceptance rule (on
rejection sample from p instead of norm(max(0, p - q))) must be caught by the same test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lmlab.core.engine import SamplingParams, probs_from_logits
from lmlab.specdec import DraftModel, PromptLookup, spec_generate
from lmlab.specdec.drafters import quantized_self_draft
from lmlab.specdec.eagle import EagleDrafter, EagleHead
from lmlab.specdec.verify import Draft

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[1, 2, 3, 1, 2], [5, 6]]  # the first repeats an n-gram, so prompt lookup proposes tokens
V = 8


def exact(target, prompt, params):
    """Exact P(t1, t2) [V, V] and P(t3) [V] under the target."""
    with torch.inference_mode():

        def dist(seqs):
            c = target.new_cache(len(seqs), 16)
            return probs_from_logits(target(torch.tensor(seqs), c).logits, params).double()

        p1 = dist([prompt])[0]
        p2 = dist([prompt + [a] for a in range(V)])  # [V, V]
        joint = p1[:, None] * p2
        p3 = dist([prompt + [a, b] for a in range(V) for b in range(V)]).reshape(V, V, V)
        return joint.numpy(), (joint[:, :, None] * p3).sum((0, 1)).numpy()


def broken_accept(draft: Draft, logits, params, gen=None, probs=None):
    """The classic bug: on rejection resample from p itself (ignores the residual). Chains only."""
    node, path = 0, []
    while node < len(draft):
        x = draft.tokens[node]
        qx = float(draft.q[node][x]) if draft.q is not None else 1.0
        if float(torch.rand((), generator=gen)) * qx < float(probs[node][x]):
            path.append(node + 1)
            node += 1
        else:
            break
    return path, int(torch.multinomial(probs[node], 1, generator=gen))


def drafter(kind, target, draft):
    if kind == "sps":
        return DraftModel(draft, adaptive=False, gamma=3)
    if kind == "selfq4":  # the target's own quantized weights, reading the target's KV cache
        return DraftModel(
            quantized_self_draft(target), adaptive=False, gamma=3, vocab=None, stream_bf16=False, shared_cache=True
        )
    if kind == "pld":
        return PromptLookup(max_ngram=2, gamma_max=3)
    torch.manual_seed(3)
    return EagleDrafter(EagleHead(target.cfg, torch.arange(V)), target, chain=3)


def run(target, d, n, params, **kw):
    prompts = [PROMPTS[i % 2] for i in range(n)]
    outs = spec_generate(target, None, d, prompts, params, **kw)
    return [(o.token_ids, i % 2) for i, o in enumerate(outs)]


def stats(samples, prompt_idx, joint, marg3):
    rows = [t for t, i in samples if i == prompt_idx]
    c12 = np.zeros((V, V))
    c3 = np.zeros(V)
    for t in rows:
        c12[t[0], t[1]] += 1
        c3[t[2]] += 1
    n = len(rows)
    keep = joint.ravel() * n > 0.5  # cells with (near) zero mass are merged away
    e12 = joint.ravel()[keep]
    p12 = chisquare(c12.ravel()[keep], e12 / e12.sum() * c12.ravel()[keep].sum()).pvalue
    k3 = marg3 * n > 0.5
    p3 = chisquare(c3[k3], marg3[k3] / marg3[k3].sum() * c3[k3].sum()).pvalue
    tv = 0.5 * np.abs(c12 / n - joint).sum()
    return p12, p3, tv


@pytest.mark.parametrize("kind", ["sps", "pld", "eagle", "selfq4"])
def test_emitted_distribution_equals_target(tiny_pair, kind):
    target, draft = tiny_pair
    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=0, ignore_eos=True)
    samples = run(target, drafter(kind, target, draft), 3000, params)
    small = run(
        target,
        drafter(kind, target, draft),
        300,
        SamplingParams(max_new_tokens=3, temperature=1.0, seed=1, ignore_eos=True),
    )
    for pi, prompt in enumerate(PROMPTS):
        joint, marg3 = exact(target, prompt, params)
        p12, p3, tv = stats(samples, pi, joint, marg3)
        _, _, tv_small = stats(small, pi, joint, marg3)
        assert p12 > 1e-3 and p3 > 1e-3, (kind, pi, p12, p3)
        assert tv < tv_small, "the distance to the target distribution must shrink with more samples"
        assert tv < 0.1


def test_filtered_sampling_is_lossless(tiny_pair):
    """top-k / top-p filtering: the draft and target distributions are both filtered; still exact."""
    target, draft = tiny_pair
    params = SamplingParams(max_new_tokens=3, temperature=0.8, top_k=5, top_p=0.9, seed=0, ignore_eos=True)
    samples = run(target, drafter("sps", target, draft), 3000, params)
    joint, marg3 = exact(target, PROMPTS[0], params)
    p12, p3, _ = stats(samples, 0, joint, marg3)
    assert p12 > 1e-3 and p3 > 1e-3


def test_broken_acceptance_rule_is_detected(tiny_pair):
    """Control: the same test must reject a lossy rule (resampling from p after a rejection)."""
    target, draft = tiny_pair
    params = SamplingParams(max_new_tokens=3, temperature=1.0, seed=0, ignore_eos=True)
    samples = run(target, drafter("sps", target, draft), 3000, params, accept_fn=broken_accept)
    joint, marg3 = exact(target, PROMPTS[0], params)
    p12, p3, tv = stats(samples, 0, joint, marg3)
    assert min(p12, p3) < 1e-6, (p12, p3, tv)
