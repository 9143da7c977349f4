import time

import pytest

from lmlab.core.backends import OpenAIBackend
from lmlab.core.llmcache import LLMCache
from lmlab.socratic.calls import Budget, Caller
from lmlab.socratic.checkers import numeric_answer, python_checker
from lmlab.socratic.engine import EngineConfig, SocraticController, ToTController
from lmlab.socratic.tree import TreeStore

from .fakes import FakeOpenAIServer, ScriptedBackend


def _run(budget=None, cfg=None, checker=None, backend=None, store=None, cache=None):
    be = backend or ScriptedBackend()
    store = store or TreeStore(None)
    r = SocraticController(Caller(be, cache, budget=budget), store, cfg or EngineConfig(), checker=checker).run("2+3?")
    return r, store.tree, be


def test_patterns_recurse_decompose_solve_integrate_and_checker_feedback_refines():
    r, tree, be = _run(checker=numeric_answer(5))
    assert [t.pattern for t in tree] == ["decomposition"] + ["deduction"] * 3 + ["integration", "verification"]
    assert tree["p/integrate"].meta["check"]["ok"] is False
    assert "42 is wrong" in tree["p/refine1"].prompt  # the checker's feedback went into the refinement turn
    assert r.ok is True and r.answer_turn == "p/refine1" and r.stop_reason == "done" and be.calls == 6
    # the integration prompt carries excerpts of each sub-answer, and says where they came from
    ex = tree["p/integrate"].context[1]["excerpts"]
    assert [e["turn"] for e in ex] == ["p.1/deduce", "p.2/deduce", "p.3/deduce"]
    assert all(e["text"] in tree["p/integrate"].prompt for e in ex)


def test_a_checker_that_rejects_everything_is_a_control_that_fails():
    r, tree, _ = _run(checker=python_checker(lambda s: False), cfg=EngineConfig(refine_rounds=2))
    assert r.ok is False and "p/refine2" in tree.turns


def test_llm_self_check_and_depth_breadth_limits():
    r, tree, _ = _run(cfg=EngineConfig(verify="llm", max_breadth=2))
    assert r.ok is True and tree["p/verify0"].pattern == "verification"
    assert len(tree.children("p/decompose")) == 3  # 2 sub-problems + the integration turn
    r, tree, _ = _run(cfg=EngineConfig(max_depth=2, max_breadth=2, verify="none"))
    assert "p.1/decompose" in tree.turns and "p.1.2/deduce" in tree.turns  # recursion
    r, tree, _ = _run(cfg=EngineConfig(max_depth=0, verify="none"))
    assert list(tree.turns) == ["p/deduce"]


@pytest.mark.parametrize(
    "budget,reason",
    [
        (Budget(max_calls=3), "max_calls"),
        (Budget(max_tokens=50), "max_tokens"),
        (Budget(max_seconds=0.15), "max_seconds"),
    ],
)
def test_budgets_stop_the_controller_with_a_named_reason(budget, reason):
    r, tree, be = _run(budget=budget, backend=ScriptedBackend(delay=0.06))
    assert r.stop_reason == reason and tree.stops[-1]["reason"] == reason
    if reason == "max_calls":
        assert be.calls == 3 and len(tree) == 3


def test_independent_subproblems_run_concurrently_on_an_http_backend():
    srv = FakeOpenAIServer(delay=0.3)
    try:
        be = OpenAIBackend("fake", base_url=srv.url, concurrency=8)
        r, tree, _ = _run(backend=be, cfg=EngineConfig(verify="llm"))
    finally:
        srv.close()
    # the three sub-problems were in flight together (the server's own count; no wall-clock assertion, which
    # failed on the loaded shared machine)
    assert srv.peak == 3 and srv.requests == 6 == len(tree)
    assert tree["p.2/deduce"].usage == {"prompt_tokens": 10, "completion_tokens": 5}


def test_cache_answers_a_rerun_with_no_model_call(tmp_path):
    cache = LLMCache(tmp_path / "c.sqlite")
    _, t1, be1 = _run(cache=cache, checker=numeric_answer(5))
    r, t2, be2 = _run(cache=cache, checker=numeric_answer(5))
    assert be1.calls == 6 and be2.calls == 0 and r.calls["cached_calls"] == 6
    assert t1.canonical() == t2.canonical()


def test_tree_of_thoughts_controller_over_the_same_tree():
    store = TreeStore(None)
    be = ScriptedBackend()
    r = ToTController(Caller(be), store, EngineConfig(), steps=2, k=3, b=2).run("make 24")
    tree = store.tree
    values = [t for t in tree if t.id.endswith("/value")]
    assert len(values) == 3 + 6 and r.answer_turn == "tot/answer"
    # greedy selection kept the 'likely' state; the answer continues from it
    assert tree.path("tot/answer")[0].id == "tot0.0/propose"
    assert "add two and three" in tree["tot/answer"].prompt


def test_micro_batcher_groups_concurrent_requests_by_parameters():
    from concurrent.futures import ThreadPoolExecutor

    from lmlab.core.engine import SamplingParams
    from lmlab.socratic.batching import MicroBatcher

    class Recording(ScriptedBackend):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def complete(self, prompts, params, json_schema=None):
            self.sizes.append((len(prompts), params.max_new_tokens))
            time.sleep(0.05)
            return super().complete(prompts, params, json_schema)

    be = Recording()
    mb = MicroBatcher(be, max_batch=4, window=0.2)
    reqs = [(i, SamplingParams(max_new_tokens=8 if i % 2 else 16, seed=i)) for i in range(8)]
    msgs = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda r: mb.complete([msgs[r[0]]], r[1])[0].text, reqs))
    assert outs == [ScriptedBackend().complete([m], SamplingParams())[0].text for m in msgs]  # each its own reply
    # two parameter groups (the greedy seeds do not split them), four requests each
    assert sorted(be.sizes) == [(4, 8), (4, 16)]


def test_micro_batcher_decodes_identical_requests_in_flight_once():
    from concurrent.futures import ThreadPoolExecutor

    from lmlab.core.engine import SamplingParams
    from lmlab.socratic.batching import MicroBatcher

    be = ScriptedBackend(delay=0.05)
    mb = MicroBatcher(be, max_batch=8, window=0.2)
    msgs = [[{"role": "user", "content": f"q{i % 3}"}] for i in range(9)]  # 3 distinct prompts, 3 times each
    with ThreadPoolExecutor(9) as pool:
        outs = list(pool.map(lambda m: mb.complete([m], SamplingParams(seed=1))[0].text, msgs))
    assert be.calls == 3 and mb.shared == 6
    assert outs == [ScriptedBackend().complete([m], SamplingParams())[0].text for m in msgs]
    # a different seed is a different request (it may sample differently): not shared
    mb.complete([msgs[0]], SamplingParams(seed=2))
    assert be.calls == 4
    assert sum(b["rows"] for b in mb.profile) == 4


def test_concurrent_sampling_gives_the_sequential_answers():
    """run_sampling asks for its B samples at once on a concurrent backend (an HTTP endpoint: each request on its
    own); the answers after k calls must be those of drawing them one by one (sample k always has the same seed),
    for majority and generate-and-test. (Through the MicroBatcher, sampled rows of one batch share a generator, so
    their text may differ from one-by-one draws; the call cache keeps a rerun identical.)"""
    from lmlab.core.backends import Completion
    from lmlab.core.engine import SamplingParams
    from lmlab.socratic.calls import Budget, Caller
    from lmlab.socratic.checkers import game24_checker
    from lmlab.socratic.tasks import calls_to_pass, game24, run_sampling

    class BySeed(ScriptedBackend):
        concurrency = 1

        def complete(self, prompts, params, json_schema=None):
            # a reply that depends only on the seed: sample 2 and 4 pass the Game-of-24 checker for (4, 6)
            text = "4 * 6 = 24" if params.seed in (2, 4) else f"4 + 6 = 10 ({params.seed})"
            return [Completion(text, "stop", 5, 5) for _ in prompts]

    p = game24(1, 0, sizes=(2,))[0]
    p.checker = p.score = game24_checker((4, 6))
    runs = {}
    for conc in (False, True):
        be = BySeed()
        be.concurrency = 8 if conc else 1
        for check in (False, True):
            c = Caller(be, None, SamplingParams(seed=0), Budget(max_calls=5))
            runs[(conc, check)] = run_sampling(p, c, 5, False, check)
            assert c.calls == 5
    assert runs[(False, False)] == runs[(True, False)] and runs[(False, True)] == runs[(True, True)]
    assert calls_to_pass(p, runs[(True, True)]) == 3  # seeds 0, 1, 2: the third sample is the first to pass
    # majority: ties keep the earliest (greedy) answer until the two passing samples outvote it at k = 5
    assert calls_to_pass(p, runs[(True, False)]) == 5
