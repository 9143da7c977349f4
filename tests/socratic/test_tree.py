import json

import pytest

from lmlab.core.errors import LmlabError
from lmlab.socratic.tree import DialogueTree, TreeStore, Turn, load_tree, save_tree


def _turn(i, parent=None, pattern="deduction", reply="r"):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": f"q{i}"}]
    return Turn(f"t{i}", pattern, msgs, parent=parent, reply=reply)


def test_store_roundtrip_branches_edits_and_openai_export(tmp_path):
    path = tmp_path / "tree.jsonl"
    st = TreeStore(path)
    a = st.add(_turn(1, reply=None))
    st.set_reply(a, "answer one", {"prompt_tokens": 3, "completion_tokens": 2}, 0.5, "stop")
    st.add(_turn(2, parent="t1"))
    b = st.add(_turn(3, parent="t1", pattern="verification"))  # a sibling: an explicit branch
    st.edit(b, "prompt", "q3 edited")
    st.stop("max_calls", "3 of 3")
    tree = load_tree(path)
    assert tree.canonical() == st.tree.canonical()
    assert [t.id for t in tree.children("t1")] == ["t2", "t3"]
    assert [t.id for t in tree.branches()] == ["t3"]
    assert tree["t3"].prompt == "q3 edited" and tree["t3"].edits[0]["before"] == "q3"
    assert tree["t1"].fresh and tree.stops == [{"reason": "max_calls", "detail": "3 of 3"}]
    ex = tree.export_openai()[0]
    assert ex["messages"][-1] == {"role": "assistant", "content": "answer one"}
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]
    # append-only: the file only grew, one event per line
    assert len(path.read_text().splitlines()) == 6
    save_tree(tree, tmp_path / "copy.jsonl")
    assert load_tree(tmp_path / "copy.jsonl").canonical() == tree.canonical()


def test_cut_last_line_is_skipped_but_a_bad_middle_line_names_the_line(tmp_path):
    path = tmp_path / "tree.jsonl"
    st = TreeStore(path)
    st.add(_turn(1))
    st.add(_turn(2, parent="t1"))
    text = path.read_text()
    path.write_text(text[:-20])  # a kill mid-write
    assert list(load_tree(path).turns) == ["t1"]
    lines = text.splitlines()
    path.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(LmlabError, match=r"tree.jsonl:2: not valid JSON"):
        load_tree(path)
    path.write_text(json.dumps({"event": "reply", "id": "nope", "reply": "x"}) + "\n")
    with pytest.raises(LmlabError, match=r":1: reply for unknown turn 'nope'"):
        load_tree(path)


def test_unknown_pattern_and_missing_parent_are_errors():
    with pytest.raises(LmlabError, match="unknown pattern"):
        _turn(1, pattern="guessing")
    with pytest.raises(LmlabError, match="parent 'zz'"):
        DialogueTree().add(_turn(1, parent="zz"))
