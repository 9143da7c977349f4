import json
from collections import Counter

import pytest

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data
from lmlab.socratic.calls import Caller
from lmlab.socratic.transcript import (
    RecordedBackend,
    classify_pattern,
    load_records,
    replay,
    replay_stats,
)
from lmlab.socratic.tree import PATTERNS, TreeStore

DATA = shared_data("pvsnp_socratic")


def test_notebooks_parse_to_the_published_structure(pvsnp_tree):
    st = replay_stats(pvsnp_tree)
    assert st["turns"] == 97
    assert sorted(st["system_roles"].values(), reverse=True) == [45, 28, 19, 3, 2]
    assert st["fresh_context_turns"] == 39
    assert st["max_user_messages"] == 12 and pvsnp_tree["t14"].pattern == "integration"
    assert all(t.pattern in PATTERNS for t in pvsnp_tree)
    # turn 4 carries one sentence (an excerpt) of turn 3's long answer
    assert pvsnp_tree["t4"].context[2] == {"kind": "excerpt", "turn": "t3"}
    assert len(pvsnp_tree["t4"].messages[2]["content"]) < len(pvsnp_tree["t3"].reply) / 10
    assert st["branch_turns"] > 0 and st["carried_assistant_messages"]["excerpt"] > 0


def test_notebooks_agree_with_the_converted_jsonl():
    nb = load_records(DATA)
    js = load_records(DATA / "turns.jsonl")
    assert [(r["turn"], r["messages"], r["responses"]) for r in nb] == [
        (r["turn"], r["messages"], r["responses"]) for r in js
    ]


@pytest.mark.parametrize(
    "turn,pattern",
    [
        (3, "decomposition"),
        (5, "transformation"),
        (14, "integration"),
        (19, "transformation"),
        (25, "transformation"),
        (35, "integration"),
        (36, "decomposition"),
        (42, "deduction"),
        (44, "deduction"),
        (46, "verification"),
        (57, "verification"),
        (82, "decomposition"),
    ],
)
def test_the_design_briefs_examples_get_their_pattern(pvsnp_tree, turn, pattern):
    assert pvsnp_tree[f"t{turn}"].pattern == pattern


def test_recorded_backend_replays_every_turn_exactly(pvsnp_tree, tmp_path):
    store = TreeStore(tmp_path / "replay.jsonl")
    out = replay(pvsnp_tree, RecordedBackend(pvsnp_tree), store, Caller(RecordedBackend(pvsnp_tree)))
    for t in pvsnp_tree:
        assert out[t.id].messages == t.messages and out[t.id].reply == t.reply
        assert json.dumps(out[t.id].openai_messages()) == json.dumps(t.openai_messages())


def test_another_backend_regenerates_each_turn_and_carries_its_own_replies(pvsnp_tree, tmp_path):
    from .fakes import ScriptedBackend

    be = ScriptedBackend(answer="REGENERATED")
    store = TreeStore(tmp_path / "r.jsonl")
    sub = [f"t{i}" for i in range(1, 9)]
    out = replay(pvsnp_tree, be, store, Caller(be), turns=sub)
    assert be.calls == 8 and all(out[i].reply == "REGENERATED" for i in sub)
    # turn 8 carried turn 7's reply verbatim: now it carries the regenerated one; excerpts stay as written
    kinds = Counter(c["kind"] for i in sub for c in pvsnp_tree[i].context)
    assert kinds["verbatim"] + kinds["excerpt"] > 0
    for i in sub:
        for m, c in zip(out[i].messages, out[i].context):
            if c["kind"] == "verbatim":
                assert m["content"] == "REGENERATED"
            elif c["kind"] == "excerpt":
                assert (
                    m["content"] in pvsnp_tree[c["turn"]].reply
                    or m["content"].split()[0] in pvsnp_tree[c["turn"]].reply
                )


def test_recorded_backend_refuses_an_unrecorded_request(pvsnp_tree):
    from lmlab.core.engine import SamplingParams

    with pytest.raises(LmlabError, match="no reply recorded"):
        RecordedBackend(pvsnp_tree).complete([[{"role": "user", "content": "new"}]], SamplingParams())


def test_malformed_transcript_names_the_line(tmp_path):
    good = (DATA / "turns.jsonl").read_text().splitlines()[0]
    p = tmp_path / "turns.jsonl"
    p.write_text(good + "\n" + '{"turn": 2, "messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(LmlabError, match=r"turns.jsonl:2: 'responses'"):
        load_records(p)
    p.write_text(
        good + "\n" + good.replace('"role": "system"', '"role": "robot"', 1).replace('"turn": 1', '"turn": 2') + "\n"
    )
    with pytest.raises(LmlabError, match=r"turns.jsonl:2: message 0 has unknown role 'robot'"):
        load_records(p)


def test_classifier_falls_back_to_deduction_and_names_its_rule():
    assert classify_pattern("Great! Let's calculate the upper bound.") == ("deduction", "default")
    assert classify_pattern("Please check your result.")[1] == "keyword:check"
