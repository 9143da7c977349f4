"""PRM scoring equals the released model's recipe run through transformers; training targets and loss."""

from __future__ import annotations

import math

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.shepherd.data import StepSolution
from lmlab.shepherd.prm import (
    MATH_SHEPHERD_FORMAT,
    PRM,
    PRMFormat,
    PRMTrainConfig,
    step_targets,
    tag_loss,
    train_reward_model,
)

Q = "Ana has 4 pens. Ana buys 3 more. How many pens does Ana have now?"
STEPS = ["4 + 3 = 7", "#### 7"]


def test_scores_match_transformers_reference(tiny_ckpt):
    """The official math-shepherd-mistral-7b-prm recipe (input 'question Step 1: ... ки', logits at tag tokens,
    softmax over the '+'/'-' logits), run on transformers' LlamaForCausalLM with the same weights."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    ref_model = LlamaForCausalLM.from_pretrained(str(tiny_ckpt), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_ckpt))
    prm = PRM.load(str(tiny_ckpt), MATH_SHEPHERD_FORMAT)
    steps = ["Ana buys 3 more, so 4 + 3 = 7.", "She has 7 pens.", "The answer is: 7"]
    output = "\n".join(f"Step {i}: {s} ки" for i, s in enumerate(steps, 1))
    ids = torch.tensor([tok.encode(f"{Q} {output}")])
    candidates = [tok.encode("+")[-1], tok.encode("-")[-1]]
    with torch.no_grad():
        logits = ref_model(ids).logits[:, :, candidates]
    ref = logits.softmax(-1)[:, :, 0][ids == tok.encode("ки")[-1]].tolist()
    got = prm.score_steps(Q, steps)
    assert len(got) == 3
    assert got == pytest.approx(ref, abs=1e-5)
    # batching with other (longer/shorter) items changes nothing
    batch = prm.score_batch([(Q, steps[:1]), (Q, steps), (Q + " Really?", steps + ["ok"])])
    assert batch[1] == pytest.approx(ref, abs=1e-5)


def test_configurable_tokens_and_errors(tiny_ckpt):
    prm = PRM.load(str(tiny_ckpt), PRMFormat(good="A", bad="B"))
    assert prm.label_ids != PRM.load(str(tiny_ckpt)).label_ids
    with pytest.raises(LmlabError, match="found 3 step tags for 2 steps"):
        prm.score_steps(Q, ["4 + 3 = 7 ки", "#### 7"])
    with pytest.raises(LmlabError, match="same token"):
        PRM.load(str(tiny_ckpt), PRMFormat(good="+", bad="+"))


def test_tag_loss_is_two_way_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
    target = torch.tensor([1.0, 0.3, float("nan")])
    p = torch.sigmoid(logits[:, 0] - logits[:, 1])
    manual = -(torch.log(p[0]) + 0.3 * torch.log(p[1]) + 0.7 * torch.log(1 - p[1])) / 2
    assert tag_loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-6)


def test_targets():
    s = StepSolution(Q, ["a", "b", "c"], [1.0, 0.25, 0.0], answer="7", gold="7")
    assert step_targets(s, PRMTrainConfig(targets="hard")) == [1.0, 1.0, 0.0]
    assert step_targets(s, PRMTrainConfig(targets="soft")) == [1.0, 0.25, 0.0]
    orm = step_targets(s, PRMTrainConfig(mode="orm"))
    assert all(math.isnan(x) for x in orm[:2]) and orm[2] == 1.0
    with pytest.raises(LmlabError):
        PRMTrainConfig(mode="both")


@pytest.mark.parametrize("targets, expect", [("soft", 0.3), ("hard", 1.0)])
def test_soft_targets_calibrate_hard_targets_saturate(tiny_ckpt, tmp_path, targets, expect):
    """Every step labelled 0.3: soft training learns P(+) ~ 0.3, hard training (0.3 > 0 -> '+') learns ~1."""
    sols = [StepSolution(f"Q{i}: " + Q, [f"{i} + {j} = {i + j}" for j in range(3)], [0.3] * 3) for i in range(24)]
    cfg = PRMTrainConfig(targets=targets, steps=40, batch_size=8, lr=3e-3)
    path = train_reward_model(str(tiny_ckpt), sols, cfg, out=tmp_path / "prm")
    scores = PRM.load(str(path)).score_batch([(f"Q9: {Q}", ["9 + 5 = 14", "9 + 6 = 15"])])[0]
    assert sum(scores) / 2 == pytest.approx(expect, abs=0.08)


def test_learns_step_labels_orm_only_last(tiny_ckpt, tmp_path):
    """PRM: label = this step says 'good'. ORM on the same data: only the last tag is trained."""

    def sol(i: int) -> StepSolution:
        words = ["good" if (i >> k) & 1 else "bad" for k in range(3)]
        ok = words[-1] == "good"
        return StepSolution(Q, words, [float(w == "good") for w in words], answer="7" if ok else "8", gold="7")

    train = [sol(i) for i in range(8)] * 4
    prm = PRM.load(
        str(
            train_reward_model(
                str(tiny_ckpt), train, PRMTrainConfig(steps=60, batch_size=8, lr=3e-3), out=tmp_path / "p"
            )
        )
    )
    s = prm.score_steps(Q, ["bad", "good", "bad"])
    assert s[1] > 0.8 and s[0] < 0.2 and s[2] < 0.2
    orm = PRM.load(
        str(
            train_reward_model(
                str(tiny_ckpt), train, PRMTrainConfig(mode="orm", steps=60, batch_size=8, lr=3e-3), out=tmp_path / "o"
            )
        )
    )
    assert orm.score_steps(Q, ["bad", "good"])[-1] > 0.8 and orm.score_steps(Q, ["good", "bad"])[-1] < 0.2
