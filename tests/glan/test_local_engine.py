"""The real local engine under the pipeline's Caller: grammar-constrained replies validate even from a random-weight
model (the control: the same model without a schema never produces valid JSON)."""

from __future__ import annotations

from pydantic import ValidationError

from lmlab.core.backends import LocalBackend
from lmlab.core.engine import SamplingParams
from lmlab.core.llmcache import LLMCache
from lmlab.glan import prompts as P
from lmlab.glan.pipeline import Caller
from lmlab.glan.schemas import Question


def test_local_engine_replies_validate(tiny_dir, tmp_path):
    be = LocalBackend(tiny_dir, dtype="float32", batch_size=4)
    caller = Caller(be, LLMCache(tmp_path / "c.sqlite"), retries=0)
    items = [(P.answer_prompt(f"Question number {i}?"), 0) for i in range(3)]
    out = caller.run("questions", items, Question, temperature=0.8, max_tokens=450)
    st = caller.stats["questions"]
    assert all(isinstance(q, Question) for q in out) and st.invalid == 0 and st.new == 3 and st.completion_tokens > 0
    raw = be.complete([p for p, _ in items], SamplingParams(max_new_tokens=40, temperature=0.8, seed=0))
    for c in raw:
        try:
            Question.model_validate_json(c.text)
            raise AssertionError("unconstrained random model produced valid JSON")
        except ValidationError:
            pass


def test_http_backend_through_lmlab_serve(tiny_dir, tmp_path):
    """The pipeline's HTTP path: OpenAIBackend -> lmlab serve (response_format -> grammar), replies cached as they land."""
    from lmlab.core.backends import OpenAIBackend
    from lmlab.core.loader import load_model
    from lmlab.core.serve import ServerThread, create_app

    lm = load_model(tiny_dir, cache=False)
    with ServerThread(create_app(lm, model_name="tiny", max_tokens_limit=512, batch_window_s=0.2)) as srv:
        be = OpenAIBackend("tiny", base_url=srv.url, concurrency=4, max_retries=0)
        cache = LLMCache(tmp_path / "c.sqlite")
        caller = Caller(be, cache, retries=0)
        items = [(P.answer_prompt(f"Question number {i}?"), 0) for i in range(4)]
        out = caller.run("questions", items, Question, temperature=0.0, max_tokens=450)
    st = caller.stats["questions"]
    assert all(isinstance(q, Question) for q in out) and st.new == 4 and len(cache) == 4
    assert st.completion_tokens == be.usage["completion_tokens"] > 0 and be.supports_response_format
