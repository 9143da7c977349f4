"""The 135M-capacity verifier (frozen body + step head), the answer-space luck rate, and MC label quality."""

from __future__ import annotations

import torch

from lmlab.shepherd.data import Problem
from lmlab.shepherd.reproduce import label_quality
from lmlab.shepherd.truth import luck_rate, lucky_completion
from lmlab.shepherd.verifier import encode, head_scores, orm_targets, step_features, train_head, truncated
from lmlab.shepherd.world import GSM_LIKE, SMALL, make_problems


def test_lucky_completion_floor_vs_exact():
    p = Problem("p", "q", "2", ["5 + 3 = 8", "8 / 4 = 2"])
    assert lucky_completion(p, 0, 9, floor=True)  # 9 // 4 = 2: the slip is undone
    assert not lucky_completion(p, 0, 9, floor=False)  # 9 / 4 = 2.25
    assert not lucky_completion(p, 0, 12, floor=True)


def test_answer_space_luck_rate_is_below_a_bound():
    small = make_problems(200, 0, SMALL, "annotate")
    gsm = make_problems(200, 0, GSM_LIKE, "annotate")
    k, n = luck_rate(small, floor=True)
    assert n > 500 and k / n > 0.05  # control: the small world undoes slips often
    k, n = luck_rate(gsm, floor=False)
    assert n > 500 and k / n < 0.01
    assert len({p.answer for p in small}) <= 31  # the answer space actually used: 0..30
    assert len({p.answer for p in gsm}) > 60  # vs many 2-3 digit answers, as in GSM8K (89 here)


def test_label_quality_counts_lucky_completions():
    p = Problem("a", "q", "16", ["5 + 3 = 8", "8 * 2 = 16"])
    rows = [
        {
            "id": "a",
            "solutions": [
                {"steps": ["5 + 3 = 9", "9 * 2 = 18", "#### 18"], "soft": [0.25, 0.0, 0.0], "hard": [1.0, 0.0, 0.0]},
                {"steps": ["5 + 3 = 8", "8 * 2 = 16", "#### 16"], "soft": [1.0, 0.5, 1.0], "hard": [1.0, 1.0, 1.0]},
            ],
        }
    ]
    q = label_quality(rows, {"a": p}, n=8)
    assert q["steps"] == 4 and q["wrong_steps"] == 2
    assert q["lucky_rate"] == 2 / 16  # 2 of the 16 completions from the two wrong prefixes reach 16
    assert q["hard_false_positive"] == 0.5 and q["hard_accuracy"] == 0.75


def test_truncated_shares_weights_and_matches_the_full_model(tiny):
    m = tiny.model
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode():
        full = m(ids, m.new_cache(1, 8), logits="none", output_hidden_states=True)
        cut = truncated(m, 1)(ids, truncated(m, 1).new_cache(1, 8), logits="none").last_hidden
        assert torch.allclose(cut, m.norm(full.hidden_states[1]), atol=1e-5)
    assert m.cfg.num_layers == 2 and len(m.layers) == 2  # the original is untouched
    assert truncated(m, 1).layers[0] is m.layers[0]


def test_prefix_shared_features_equal_one_by_one(tiny):
    m, tok = tiny.model, tiny.tokenizer
    q = "Ana has 5 apples. Ana buys 3 more. How many apples does Ana have now?"
    items = [(q, ["5 + 3 = 8", "#### 8"]), (q, ["5 + 3 = 9", "9", "#### 9"]), ("Ben has 2 pens.", ["#### 2"])]
    shared = step_features(m, tok, items, max_rows=2)
    for (question, steps), f in zip(items, shared):
        prompt, segs = encode(tok, question, steps)
        ids = prompt + [t for s in segs for t in s]
        with torch.inference_mode():
            h = m(torch.tensor([ids]), m.new_cache(1, len(ids)), logits="none").last_hidden[0]
        ends = torch.tensor([len(s) for s in segs]).cumsum(0) - 1 + len(prompt)
        assert f.shape == (len(steps), m.cfg.hidden_size)
        assert torch.allclose(f, h[ends], atol=1e-4)


def test_head_learns_a_step_signal_and_a_shuffled_control_does_not():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(4, 16, generator=g) for _ in range(150)]
    good = [(f[:, 0] > 0).float().tolist() for f in feats]
    head = train_head(feats, good, seed=0, steps=300)
    test = [torch.randn(4, 16, generator=g) for _ in range(50)]
    truth = torch.cat([(f[:, 0] > 0).float() for f in test])
    scores = head_scores(head, test)
    assert [len(s) for s in scores] == [4] * 50
    acc = ((torch.tensor([x for s in scores for x in s]) > 0.5).float() == truth).float().mean()
    assert acc > 0.9
    perm = torch.randperm(len(good), generator=g).tolist()
    control = train_head(feats, [good[i] for i in perm], seed=0, steps=300)
    c = torch.tensor([x for s in head_scores(control, test) for x in s])
    assert ((c > 0.5).float() == truth).float().mean() < 0.7


def test_orm_targets_only_at_the_last_step():
    t = orm_targets(3, True)
    assert t[-1] == 1.0 and all(x != x for x in t[:-1])  # NaN: no loss
    feats = [torch.randn(3, 4) for _ in range(20)]
    head = train_head(feats, [orm_targets(3, i % 2 == 0) for i in range(20)], steps=5)
    assert len(head_scores(head, feats)[0]) == 3
