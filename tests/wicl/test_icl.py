"""Label scoring, MSP and search on SmolLM2-135M: native vs transformers, multi-token labels, MSP masking exactness."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.wicl.attention import HFLM, NativeLM
from lmlab.wicl.icl import Scorer, build_prompt, label_ids
from lmlab.wicl.search import beam_search, exhaustive_search
from lmlab.wicl.tasks import Example, Template, load_task

TPL = Template("Sentence: {text} Sentiment:", " {answer}", ("negative", "positive"))
DEMOS = [
    Example({"text": "a dull , lifeless film ."}, 0),
    Example({"text": "warm and funny ."}, 1),
    Example({"text": "too long ."}, 0),
]
QUERIES = [Example({"text": "a gem of a movie ."}, 1), Example({"text": "boring ."}, 0)]


@pytest.fixture(scope="module")
def lms(smollm):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(smollm.path, dtype=torch.float32)
    return NativeLM(smollm.model, smollm.tokenizer), HFLM(hf, smollm.tokenizer)


def _plain_logprobs(lm, ids, targets):
    """Summed log-probability of `targets` after `ids` by a plain full-sequence native forward."""
    m = lm.model
    full = ids + targets
    lg = m(torch.tensor([full]), m.new_cache(1, len(full)), logits="all").logits[0].log_softmax(-1)
    return sum(lg[len(ids) - 1 + i, t].item() for i, t in enumerate(targets))


def test_native_and_transformers_agree_on_smollm2(lms):
    """The same SmolLM2 weights: lmlab's native engine vs transformers' LlamaForCausalLM from the converted checkpoint."""
    nat, hf = lms
    W = torch.tensor([[0.8, 1.2, 1.1]])
    for placement in ("skm", "saw"):
        out = []
        for lm in (nat, hf):
            sc = Scorer(
                lm,
                TPL,
                build_prompt(lm.tokenizer, TPL, DEMOS),
                placement,
                layers=list(range(0, 30, 2)),
                heads=[0, 4, 8],
            )
            out.append((sc.label_logprobs([sc.query_ids(QUERIES[0])], W), sc.msp(W, "span")))
        for a, b in zip(*out):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_multi_token_labels_are_summed_logprobs(lms):
    nat, _ = lms
    tok = nat.tokenizer
    tpl = Template("Input: {text} Type:", " {answer}", ("photosynthesis", "xylophonist"))
    sc = Scorer(nat, tpl, build_prompt(tok, tpl, DEMOS[:2]))
    assert max(len(x) for x in sc.labels) > 1
    q = sc.query_ids(QUERIES[0])
    got = sc.label_logprobs([q], None)[0]
    raw = torch.tensor([_plain_logprobs(nat, sc.prompt.ids + q, lab) for lab in sc.labels])
    torch.testing.assert_close(got, raw.log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_msp_span_mask_removes_the_last_demo_exactly(lms):
    """Masking the last demonstration's span equals a prompt without it, the query keeping its positions."""
    nat, _ = lms
    m, tok = nat.model, nat.tokenizer
    sc = Scorer(nat, TPL, build_prompt(tok, TPL, DEMOS))
    got = -sc.msp(torch.ones(1, 3), "span")  # mean over j of log p(y_j); check j = 2 alone below
    b, _ = sc.prompt.spans[2]
    q = sc.query_ids(DEMOS[2])
    cache = m.new_cache(1, b + len(q))
    m(torch.tensor([sc.prompt.ids[:b]]), cache, logits="none")
    P = len(sc.prompt.ids)
    lg = m(torch.tensor([q]), cache, positions=torch.arange(P, P + len(q))[None], logits="last").logits[0]
    ref = lg.log_softmax(-1)[[x[0] for x in sc.labels]].log_softmax(-1)[DEMOS[2].label]
    vis = torch.ones(1, P, dtype=torch.bool)
    vis[0, b:] = False
    one = sc.label_logprobs([q], torch.ones(1, 3), vis)[0, DEMOS[2].label]
    torch.testing.assert_close(one, ref, rtol=1e-4, atol=1e-4)
    assert got.shape == (1,)
    # the paper's span mask hides more than the released code's last-token mask: self-prediction gets harder
    assert sc.msp(torch.ones(1, 3), "span").item() > sc.msp(torch.ones(1, 3), "last_token").item()


def test_accuracy_batches_candidates_as_rows(lms):
    nat, _ = lms
    sc = Scorer(nat, TPL, build_prompt(nat.tokenizer, TPL, DEMOS), "saw")
    W = torch.tensor([[1.0, 1.0, 1.0], [0.9, 1.1, 0.9]])
    acc = sc.accuracy(QUERIES, W)
    assert acc.shape == (2,)
    assert acc[0] == sc.accuracy(QUERIES)[0]
    pred = sc.predictions(QUERIES, W[1])
    assert acc[1] == (pred == torch.tensor([1, 0])).float().mean()


def test_label_word_errors(smollm):
    tok = smollm.tokenizer
    with pytest.raises(LmlabError, match="not a single token"):
        label_ids(tok, Template("{text}", " {answer}", ("xylophonist", "artist")), "single")
    with pytest.raises(LmlabError, match="not distinguishable"):
        label_ids(tok, Template("{text}", " {answer}", ("abcdx", "abcdy")), "first")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    wl = Tokenizer(models.WordLevel({"[UNK]": 0, "good": 1, "bad": 2, "Input:": 3}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    word = PreTrainedTokenizerFast(tokenizer_object=wl, unk_token="[UNK]")
    assert label_ids(word, Template("{text}", " {answer}", ("good", "bad"))) == [[1], [2]]
    with pytest.raises(LmlabError, match="'great' is not in the model's vocabulary"):
        label_ids(word, Template("{text}", " {answer}", ("good", "great")))


def test_beam_search_matches_exhaustive_on_separable_scores():
    torch.manual_seed(0)
    table = torch.randn(5, 3)
    space = (0.9, 1.0, 1.1)
    calls = []

    def score(W):
        calls.append(W.shape[0])
        idx = torch.tensor([[space.index(round(x, 1)) for x in row] for row in W.tolist()])
        return table.gather(1, idx.T).T.sum(1) if False else torch.stack([table[i, idx[:, i]] for i in range(5)]).sum(0)

    ex = exhaustive_search(score, 5, space)
    bs = beam_search(score, 5, space, beam=1)
    assert bs.weights == ex.weights and abs(bs.score - ex.score) < 1e-6  # greedy is exact when scores add up
    assert ex.evaluations == 3**5 and bs.evaluations == 1 + 2 * 5
    assert max(calls[len(calls) - 5 :]) <= 3  # one batch of candidates per coordinate
    wide = beam_search(score, 5, space, beam=3)
    assert wide.score <= bs.score + 1e-6


def test_beam_width_helps_on_coupled_scores():
    """A score where greedy coordinate descent gets stuck; a wider beam or the oracle does better (control)."""
    space = (0.9, 1.0, 1.1)

    def score(W):
        a, b = W[:, 0], W[:, 1]
        return torch.where(
            (a - 1.1).abs() < 1e-6,
            torch.where((b - 1.1).abs() < 1e-6, -2.0, 1.0),
            torch.where((b - 1.0).abs() < 1e-6, 0.0, 0.5),
        )

    ex, greedy = exhaustive_search(score, 2, space), beam_search(score, 2, space, 1)
    assert ex.score == -2.0 and greedy.score > ex.score
    assert beam_search(score, 2, space, 3).score == -2.0


def test_real_task_end_to_end(lms):
    nat, _ = lms
    t = load_task("sst2")
    sc = Scorer(nat, t.template, build_prompt(nat.tokenizer, t.template, t.train[:2]))
    res = beam_search(lambda W: sc.msp(W), 2, beam=1)
    assert len(res.weights) == 2 and res.evaluations == 5
    assert 0.0 <= sc.accuracy(t.test[:4], torch.tensor([res.weights]))[0] <= 1.0


def test_length_batches_pad_little_and_keep_identical_rows_together():
    from lmlab.wicl.icl import length_batches

    lens = [15, 39, 27, 28, 23, 32, 21, 20] * 17
    keys = [[n] for n in range(8)] * 17
    batches = length_batches(lens, 64, key=keys)
    assert sorted(i for b in batches for i in b) == list(range(len(lens)))
    padded = sum(len(b) * max(lens[i] for i in b) for b in batches)
    assert padded <= 1.125 * sum(lens)
    assert all(len(b) <= 64 for b in batches)
    for b in batches:  # identical rows adjacent
        ks = [keys[i][0] for i in b]
        runs = [k for n, k in enumerate(ks) if n == 0 or ks[n - 1] != k]
        assert len(runs) == len(set(ks))
