"""Shared-prefix log-likelihoods vs separate full prompts, resumable runs, conditions, summaries."""

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.deepeval.data import load_subtask
from lmlab.deepeval.loglik import LoglikScorer, option_logprobs_separate, option_logprobs_shared
from lmlab.deepeval.run import RunConfig, run_generate, run_loglik, summarize
from lmlab.deepeval.store import PredictionStore


@pytest.fixture(scope="module")
def items():
    return load_subtask("title")[:3]


@pytest.mark.parametrize("max_rows", [None, 8])  # 8: options split over several packed rows, one longer than a row
def test_shared_prefix_equals_separate_prompts(smollm, items, max_rows, monkeypatch):
    """Options packed into one row on top of the prefix (block-diagonal mask, positions restarting per option) give
    the separate prompts' numbers. Tolerance 1e-3 nats on summed log-probs (fp32; measured differences are ~3e-5:
    chunk boundaries move the float summation order). Control: a different prefix gives different values."""
    if max_rows is not None:
        monkeypatch.setattr("lmlab.core.kernels.MAX_ROWS", max_rows)
    s = LoglikScorer(smollm)
    for it in items[:1]:
        prefix, conts = s.encode("Which title fits? " + it.options["A"], it.option_list())
        a = option_logprobs_shared(smollm.model, prefix, conts)
        b = option_logprobs_separate(smollm.model, prefix, conts)
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
        c = option_logprobs_separate(smollm.model, prefix[:-3] + prefix[-2:], conts)
        assert max(abs(x - y) for x, y in zip(a, c)) > 1e-2
    # reference: transformers-free direct computation with a full-sequence forward and logits="all"
    prefix, conts = s.encode("Pick one.", ["Rain", "Snow and ice"])
    full = prefix + conts[1]
    with torch.inference_mode():
        logits = smollm.model(torch.tensor([full]), smollm.model.new_cache(1, len(full)), logits="all").logits[0]
    lp = torch.log_softmax(logits.float(), -1)
    ref = sum(float(lp[len(prefix) - 1 + t, tok]) for t, tok in enumerate(conts[1]))
    assert abs(option_logprobs_shared(smollm.model, prefix, conts)[1] - ref) < 1e-3
    # unequal lengths, a one-token option (nothing but the first token to score) and a repeated option
    prefix, conts = s.encode("Pick one.", ["A", "Snow and ice on the long road home tonight", "Rain", "Rain"])
    a = option_logprobs_shared(smollm.model, prefix, conts)
    b = option_logprobs_separate(smollm.model, prefix, conts)
    assert len(conts[0]) == 1 and len(conts[1]) > 8 and max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    assert abs(a[2] - a[3]) < 1e-4  # same text, other place in the packed row


class FakeAnswerer:
    """Answers "(B)" to questions, a fixed text to the describe prompt; counts calls; can fail after n answers."""

    name = "fake"
    vision = False

    def __init__(self, fail_after=None):
        self.calls, self.fail_after, self.prompts = 0, fail_after, []

    def answer(self, reqs, params):
        out = []
        for r in reqs:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt
            self.calls += 1
            self.prompts.append(r.text)
            out.append("a picture of a dog" if r.text.startswith("Describe") else "(B)")
        return out


def test_resume_after_kill(tmp_path, items):
    path = tmp_path / "pred.jsonl"
    cfg = RunConfig(templates=(1, 2), rotations=4, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        run_generate(items, FakeAnswerer(fail_after=5), PredictionStore(path), cfg)
    assert len(PredictionStore(path)) == 5
    with path.open("ab") as f:
        f.write(b'{"model": "fake/gen')  # a torn line from a kill mid-write
    again = FakeAnswerer()
    store = PredictionStore(path)
    assert store.torn == 1
    assert run_generate(items, again, store, cfg) == 3 * 2 * 4 - 5 and again.calls == 19  # nothing repeated
    assert run_generate(items, FakeAnswerer(), PredictionStore(path), cfg) == 0
    recs = list(PredictionStore(path).records.values())
    assert len(recs) == 24 and PredictionStore(path).torn == 0
    tables = summarize(recs)
    acc = {r["scorer"]: r for r in tables["accuracy"]}
    # always "(B)": right only where the rotated gold is B; circular needs all four rotations -> 0
    want = 100 * sum(it.gold(0) == "B" for it in items) / len(items)
    assert acc["robust"]["P1"] == pytest.approx(want) and acc["robust"]["circular"] == 0.0
    assert {r["robust_method"] for r in recs} == {"robust/letter"}


def test_conditions(tmp_path, items):
    fa = FakeAnswerer()
    store = PredictionStore(tmp_path / "p.jsonl")
    run_generate(items[:2], fa, store, RunConfig(templates=(1,), condition="oracle"))
    assert fa.prompts[0].startswith(f"Description: {items[0].description.strip()}\nChoose the correct")
    fb = FakeAnswerer()
    run_generate(items[:2], fb, store, RunConfig(templates=(1,), condition="self"))
    assert fb.prompts[:2] == ["Describe the image in detail."] * 2
    assert fb.prompts[2].startswith("Description: a picture of a dog\nChoose")
    assert len(store.rows(subtask="self_description")) == 2
    with pytest.raises(LmlabError, match="unknown condition"):
        RunConfig(condition="both")


def test_vision_run_without_images_is_one_line(tmp_path, items):
    fa = FakeAnswerer()
    fa.vision = True
    with pytest.raises(LmlabError, match="needs images and has none"):
        run_generate(items, fa, PredictionStore(tmp_path / "p.jsonl"), RunConfig())


def test_loglik_run(smollm, tmp_path, items):
    store = PredictionStore(tmp_path / "ll.jsonl")
    n = run_loglik(items[:1], LoglikScorer(smollm), store, RunConfig(templates=(1,)), "smol")
    assert n == 1
    rec = next(iter(store.records.values()))
    assert rec["ll_mean_letter"] in "ABCD" and len(rec["ll_sum"]) == 4 and rec["mode"] == "loglik"
    assert (
        run_loglik(
            items[:1], LoglikScorer(smollm), PredictionStore(tmp_path / "ll.jsonl"), RunConfig(templates=(1,)), "smol"
        )
        == 0
    )
