"""The controller on the embedded SmolLM2-135M through the real LocalBackend (and the micro-batcher)."""

import pytest

from lmlab.core.backends import LocalBackend
from lmlab.core.engine import SamplingParams
from lmlab.socratic.batching import MicroBatcher
from lmlab.socratic.calls import Budget, Caller
from lmlab.socratic.engine import EngineConfig, SocraticController
from lmlab.socratic.tree import TreeStore


@pytest.mark.slow
def test_socratic_controller_on_the_embedded_model(smollm):
    local = LocalBackend.__new__(LocalBackend)  # reuse the session's loaded model instead of loading it again
    local.lm, local.name, local.batch_size, local.speculative = smollm, "smollm2-135m-instruct", 8, None
    be = MicroBatcher(local, max_batch=4)
    store = TreeStore(None)
    caller = Caller(be, None, SamplingParams(max_new_tokens=12), Budget(max_calls=4))
    r = SocraticController(caller, store, EngineConfig(max_breadth=2, verify="none")).run("What is 3 + 4?")
    tree = store.tree
    assert tree["p/decompose"].reply and tree["p/decompose"].usage["completion_tokens"] <= 12
    assert r.calls["model_calls"] == len(tree) <= 4 and r.stop_reason in ("done", "max_calls")
    # the micro-batcher answers exactly what the engine answers for the same request alone
    t = tree["p/decompose"]
    assert local.complete([t.messages], SamplingParams(max_new_tokens=12))[0].text == t.reply
