"""Methods on a toy problem: bounds behave, every component runs and changes training, resume is exact."""

from __future__ import annotations

import functools

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.infocl.methods import parse_method
from lmlab.infocl.metrics import compute
from lmlab.infocl.train import Learner

from .toy import TASKS, hyper, net, toy


@functools.cache
def _run(method: str):
    feats, split = toy()
    state = Learner(net(), feats, split, TASKS, parse_method(method), hyper()).run()
    return compute(TASKS, split.test_labels.tolist(), state.preds, {0: "a", 3: "a"}), state


def test_finetune_forgets_and_replay_remembers():
    ft, _ = _run("finetune")
    er, st = _run("er")
    joint, _ = _run("joint")
    assert ft["acc_matrix"][2][0] < 20  # the lower bound forgets task 1 almost entirely
    assert er["acc_matrix"][2][0] > ft["acc_matrix"][2][0] + 30
    assert joint["final_acc"] >= er["final_acc"] - 5 and joint["final_acc"] > 80
    assert sorted(st.memory) == list(range(6)) and all(len(v) == 4 for v in st.memory.values())
    assert ft["forgetting"] > er["forgetting"]


@pytest.mark.parametrize("method", ["er+kmeans", "er+fscl", "er+cpcl", "er+adv", "infocl", "infocl+ncm", "derpp"])
def test_each_component_runs_and_changes_the_result(method):
    base, _ = _run("er")
    got, st = _run(method)
    assert 0 <= got["final_acc"] <= 100 and len(got["avg_acc"]) == 3
    assert got["acc_matrix"] != base["acc_matrix"] or st.memory != _run("er")[1].memory  # it does something


def test_kmeans_memory_differs_from_random_and_is_deterministic():
    feats, split = toy()
    a = Learner(net(), feats, split, TASKS[:1], parse_method("er+kmeans"), hyper()).run().memory
    b = Learner(net(), feats, split, TASKS[:1], parse_method("er+kmeans"), hyper()).run().memory
    assert a == b and a != _run("er")[1].memory  # KMeans random_state=0; not the random selection
    assert all(r in split.train[c].tolist() for c, rows in a.items() for r in rows)


def test_fscl_queue_and_slow_branch():
    feats, split = toy()
    m = parse_method("er+fscl")
    learner = Learner(net(), feats, split, TASKS, m, hyper())
    learner.run()
    q = learner.net.queue
    assert q.shape == (32, 16) and set(learner.net.queue_labels.tolist()) <= {4, 5}  # last task's keys
    t, o = learner.net.target["pooler"].weight, learner.net.online_pooler.weight
    assert not torch.equal(t, o) and (t - o).abs().max() < (o.abs().max())  # a lagging EMA copy


def test_unknown_methods_are_one_line_errors():
    for bad, msg in (("ewc", "unknown method"), ("er+foo", "unknown component"), ("finetune+cpcl", "memory stage")):
        with pytest.raises(LmlabError, match=msg):
            parse_method(bad)
    assert parse_method("infocl") == parse_method("er+kmeans+fscl+cpcl+adv").__class__(
        "infocl", kmeans=True, fscl=True, cpcl=True, adv=True
    )


def test_resume_continues_from_the_last_finished_task(tmp_path):
    feats, split = toy()
    m = parse_method("infocl")
    whole = Learner(net(), feats, split, TASKS, m, hyper()).run()

    class Killed(Exception):
        pass

    def kill_after_second(t, state):
        if t == 1:
            raise Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        Learner(net(), feats, split, TASKS, m, hyper(), ckpt).run(kill_after_second)
    assert (ckpt / "state.pt").exists() and not list(tmp_path.glob(".ckpt.tmp*"))
    trained = []
    resumed = Learner(net(), feats, split, TASKS, m, hyper(), ckpt).run(lambda t, s: trained.append(t))
    assert trained == [2]  # only the third task was trained again
    assert resumed.preds == whole.preds  # exactly the uninterrupted run (dropout seeded per task)
    assert resumed.memory == whole.memory
    assert resumed.erank_first == whole.erank_first and len(whole.erank_first) == 3  # IB diagnostic, every task
    assert all(1 <= e <= 16 for e in whole.erank_first)


def test_stage2_adversarial_step_perturbs_the_input_not_doubles_it():
    """FreeLB with step 0 keeps delta = 0, so the stage-2 step must give exactly the clean CE gradient on x
    (a loss_fn that added x again trained stage 2 on 2x + delta)."""
    feats, split = toy()
    grads = []
    for method, step in (("er", "_default_step"), ("er+adv", "_new_old_step")):
        learner = Learner(net(dropout=0.0, proj_dropout=0.0), feats, split, TASKS, parse_method(method),
                          hyper(adv_lr=0.0))  # fmt: skip
        learner.row_label = torch.full((len(feats),), -1, dtype=torch.long)
        for lab, rows in split.train.items():
            learner.row_label[rows] = lab
        idx = torch.cat([split.train[0][:4], split.train[1][:4]])
        getattr(learner, step)(idx, idx, [len(idx)])
        grads.append(learner.net.classifier.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
