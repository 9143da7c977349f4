"""Shared-prefix batched completion: exact against per-prefix generation, statistically exact when sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lmlab.core.engine import SamplingParams, generate
from lmlab.shepherd.complete import complete_cuts


def _seqs(tok):
    texts = ["Q: Ana has 4 pens. Ana buys 3 more.\nA:\n4 + 3 = 7\n#### 7\n", "Q: Ben has 9 eggs.\nA:\n9 - 2 = 7\n"]
    return [tok(t).input_ids for t in texts]


@pytest.mark.parametrize("max_rows", [512, 6])
def test_greedy_matches_per_prefix_generation(tiny, max_rows):
    """Every cut, fanned out from one prefill of the whole sequence, continues exactly as a fresh prefill would."""
    model, tok = tiny.model, tiny.tokenizer
    seqs = _seqs(tok)
    cuts = [[5, len(seqs[0]) - 4, len(seqs[0])], [len(seqs[1]) - 1]]
    p = SamplingParams(max_new_tokens=12, temperature=0.0)
    got = complete_cuts(model, tok, seqs, cuts, 3, p, max_rows=max_rows)
    for b, cs in enumerate(cuts):
        for j, c in enumerate(cs):
            ref = generate(model, tok, [seqs[b][:c]], p)[0].token_ids
            assert got[b][j] == [ref] * 3


def test_first_token_distribution(tiny):
    """Sampled first tokens at a cut follow softmax(logits of that prefix) (chi-square); a wrong reference fails."""
    model, tok = tiny.model, tiny.tokenizer
    seq = _seqs(tok)[0]
    cut, n = 9, 3000
    p = SamplingParams(max_new_tokens=1, temperature=1.0, stop_token_ids=[])
    g = torch.Generator().manual_seed(0)
    first = [c[0] for c in complete_cuts(model, tok, [seq], [[cut]], n, p, g)[0][0]]

    def probs(prefix):
        with torch.inference_mode():
            return (
                model(torch.tensor([prefix]), model.new_cache(1, len(prefix)))
                .logits[0]
                .softmax(-1)
                .numpy()
                .astype(np.float64)
            )

    counts = np.bincount(first, minlength=model.cfg.vocab_size).astype(np.float64)

    def pvalue(ref):
        top = ref > 2e-3  # pool the tail so expected counts are large enough
        obs, exp = np.append(counts[top], counts[~top].sum()), np.append(ref[top], ref[~top].sum()) * n
        obs, exp = obs[exp > 0], exp[exp > 0]
        return chisquare(obs, exp * obs.sum() / exp.sum()).pvalue

    assert pvalue(probs(seq[:cut])) > 1e-3
    assert pvalue(probs(seq[: cut - 1])) < 1e-6  # control: the neighbouring prefix's distribution is rejected


def test_seeded_and_bad_cut(tiny):
    model, tok = tiny.model, tiny.tokenizer
    seqs = _seqs(tok)
    p = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    a = complete_cuts(model, tok, seqs, [[4], [6]], 4, p)
    assert a == complete_cuts(model, tok, seqs, [[4], [6]], 4, p)
    assert len({tuple(x) for x in a[0][0]}) > 1  # samples differ from each other
    with pytest.raises(ValueError, match="cuts"):
        complete_cuts(model, tok, seqs, [[0], [6]], 2, p)
