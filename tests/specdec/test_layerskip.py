"""Self-speculation by layer skipping: the draft is the target's own blocks minus some layers, on the target's cache.

Greedy output equals plain decoding token for token. That holds on every path where a k-token verification pass
gives each token the argmax a 1-token step gives it: bit for bit with lmlab's CPU kernels; on torch's path (this
AVX2 machine today, kernels off) the logits may differ in the last bits and a near tie could flip, which these
prompts do not hit (the same holds, and is asserted the same way, for every other drafter in test_greedy_exact.py).
"""

from __future__ import annotations

import pytest
import torch

from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.model import KVCache
from lmlab.specdec import SpecStats, make_drafter, spec_generate
from lmlab.specdec.layerskip import LayerSkipModel, _expected_speedup, calibrate, layerskip_drafter

QUESTIONS = ["Write two sentences about the sea.", "Translate to French: Good morning, how are you today?"]


def test_keeping_every_layer_is_the_target(make_tiny):
    """The hand-written forward with no layer skipped is the target's forward (same ops, same bits)."""
    m = make_tiny(3, layers=4)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    c1, c2 = m.new_cache(1, 16), m.new_cache(1, 16)
    full = m(ids, c1, logits="all").logits
    mine = LayerSkipModel(m, [0, 1, 2, 3])(ids, c2, logits="all").logits
    assert torch.equal(full, mine) and c1.lengths == c2.lengths == [5]
    # and skipping a layer changes the numbers (the control: the skip is real)
    c3 = m.new_cache(1, 16)
    assert not torch.allclose(LayerSkipModel(m, [0, 3])(ids, c3, logits="all").logits, full)
    with pytest.raises(ValueError):
        LayerSkipModel(m, [0, 7])


def test_skipped_layers_leave_their_cache_slots_alone(make_tiny):
    m = make_tiny(4, layers=4)
    cache: KVCache = m.new_cache(1, 16)
    LayerSkipModel(m, [0, 3])(torch.tensor([[1, 2, 3]]), cache)
    assert cache.k[0][0, :, :3].abs().sum() > 0 and cache.k[3][0, :, :3].abs().sum() > 0
    assert cache.k[1].abs().sum() == 0 and cache.k[2].abs().sum() == 0


def test_expected_speedup_formula():
    assert _expected_speedup(0.0, 0.5) == pytest.approx(1 / 1.5, rel=1e-3)  # always rejected: pays the draft
    assert _expected_speedup(0.9, 0.5) > _expected_speedup(0.6, 0.5) > 1.0


@pytest.fixture(scope="module")
def prompts(smollm):
    return [encode_chat(smollm.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_greedy_identical_and_shares_the_target(smollm, prompts):
    # a fixed skip set keeps the test fast; calibration is tested below
    d = layerskip_drafter(smollm.model, smollm.tokenizer, skip=list(range(2, 28, 2)))
    assert d.uses_target_cache and d.model.target is smollm.model and len(d.model.keep) == 30 - 13
    p = SamplingParams(max_new_tokens=32)
    ref = generate(smollm.model, smollm.tokenizer, prompts, p)
    st = SpecStats()
    out = spec_generate(smollm.model, smollm.tokenizer, d, prompts, p, stats=st)
    for o, r in zip(out, ref):
        assert o.token_ids == r.token_ids and o.text == r.text and o.finish_reason == r.finish_reason
    assert st.passes > 0 and st.proposed > 0 and st.accepted > 0  # an untrained draft that is right sometimes


def test_calibration_keeps_ends_and_picks_by_expected_speedup(smollm):
    info = calibrate(smollm.model, smollm.tokenizer, prompts=("Write two sentences about the sea.",), new_tokens=16)
    L = smollm.model.cfg.num_layers
    assert 0 in info["keep"] and L - 1 in info["keep"] and set(info["keep"]) | set(info["skip"]) == set(range(L))
    best = max(info["candidates"], key=lambda c: c["expected_speedup"])
    assert info["skip"] == best["skip"] and 0 < info["agreement"] <= 1
    # skipping more layers cannot raise agreement much (the least harmful layers go first)
    ags = [c["agreement"] for c in info["candidates"]]
    assert ags[0] >= ags[-1] - 0.1


def test_registered_as_a_method(smollm):
    from lmlab.specdec.bench import METHODS as BENCH
    from lmlab.specdec.registry import METHODS
    from lmlab.specdec.reproduce import OURS

    assert "layerskip" in METHODS and "layerskip" in BENCH and "layerskip" in OURS
    d = make_drafter(smollm, "layerskip", skip=[5, 6])
    assert d.name == "layerskip" and d.calibration["skip"] == [5, 6]
