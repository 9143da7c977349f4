"""Grammar-constrained decoding (core.structured): valid structure from a 135M model, exact masking, forced EOS."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError

from lmlab.core.engine import SamplingParams, encode_chat, generate
from lmlab.core.errors import LmlabError
from lmlab.core.structured import compile_schema, json_schema_processor


class Level(BaseModel):
    name: str = Field(max_length=24)
    level: str = Field(pattern="^(introductory|intermediate|advanced)$")


class Subjects(BaseModel):
    subjects: list[Level] = Field(min_length=1, max_length=2)


PROMPTS = [
    "List subjects a student of physics should learn, as JSON.",
    "Name subjects in world history as JSON.",
    "Give me a JSON object describing chemistry courses.",
]


def _ids(lm, prompts):
    return [encode_chat(lm.tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def _run(lm, params, schema):
    ids = _ids(lm, PROMPTS)
    procs = [json_schema_processor(lm.tokenizer, schema, len(ids))] if schema else []
    return generate(lm.model, lm.tokenizer, ids, params, processors=procs)


@pytest.mark.slow
def test_constrained_output_validates_and_stops(smollm):
    schema = Subjects.model_json_schema()
    for params in (SamplingParams(max_new_tokens=64), SamplingParams(max_new_tokens=64, temperature=1.0, seed=3)):
        for g in _run(smollm, params, schema):
            assert g.finish_reason == "stop", g.text  # EOS forced once the object closed
            Subjects.model_validate_json(g.text)  # exact: the whole text, no trailing junk
            assert g.token_ids[-1] != smollm.tokenizer.eos_token_id


@pytest.mark.slow
def test_control_unconstrained_output_is_not_valid(smollm):
    """The same model and prompts without the grammar: the 135M model does not produce schema-valid JSON."""
    failures = 0
    for g in _run(smollm, SamplingParams(max_new_tokens=24), None):
        try:
            Subjects.model_validate_json(g.text)
        except ValidationError:
            failures += 1
    assert failures == len(PROMPTS)


def test_mask_is_exactly_the_grammar(smollm):
    """Masked positions are exactly the tokens xgrammar rejects; the argmax of allowed tokens is kept."""
    import xgrammar as xgr

    tok = smollm.tokenizer
    V = smollm.model.cfg.vocab_size
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    proc = json_schema_processor(tok, schema, 2)
    logits = torch.randn(2, V)
    prefix = tok('{"a":', add_special_tokens=False).input_ids
    out = proc([0, 1], [[], prefix], logits.clone())
    m = xgr.GrammarMatcher(compile_schema(tok, schema, V))
    for row, toks in ((0, []), (1, prefix)):
        m.reset()
        for t in toks:
            assert m.accept_token(t)
        ref_mask = xgr.allocate_token_bitmask(1, V)
        m.fill_next_token_bitmask(ref_mask, 0)
        ref = logits[row : row + 1].clone()
        xgr.apply_token_bitmask_inplace(ref, ref_mask)
        assert torch.equal(out[row], ref[0])
        assert torch.isfinite(out[row]).sum() < V // 10  # the grammar really restricts
    assert torch.isinf(out[0, tok("hello", add_special_tokens=False).input_ids[0]])  # JSON must open with '{'


def test_complete_value_forces_eos(smollm):
    tok = smollm.tokenizer
    V = smollm.model.cfg.vocab_size
    proc = json_schema_processor(
        tok, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}, 1
    )
    done = tok('{"a": 7}', add_special_tokens=False).input_ids
    out = proc([0], [done], torch.zeros(1, V))
    assert torch.isfinite(out[0]).sum() == 1 and out[0].argmax() == tok.eos_token_id


def test_bad_schema_is_one_line_error(smollm):
    with pytest.raises(LmlabError, match="json schema"):
        compile_schema(smollm.tokenizer, {"type": "no-such-type"}, smollm.model.cfg.vocab_size)
