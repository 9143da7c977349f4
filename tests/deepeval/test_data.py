"""Readers, templates, whitespace handling, blind baselines on the released files, one-line errors."""

import json

import pytest

from lmlab.core.errors import LmlabError
from lmlab.deepeval.baselines import blind_baselines
from lmlab.deepeval.data import SUBTASKS, build_prompt, load_subtask, read_questions, template


@pytest.fixture(scope="module")
def release():
    return {s: load_subtask(s) for s in SUBTASKS}


def test_release_shape_and_join(release):
    for s, items in release.items():
        assert len(items) == 1001
        assert all(it.description for it in items)
        assert all(it.prompts[k] == template(s, k) for it in items for k in (1, 2, 3))
    from collections import Counter

    assert Counter(it.answer for it in release["deep_semantics"]) == {"B": 280, "A": 247, "D": 243, "C": 231}
    # the description subtask's gold is the annotation's description (joined on Image_ID, line orders differ)
    d = release["description"]
    assert sum(it.options[it.answer].strip() == it.description.strip() for it in d) > 900


def test_prompt_whitespace_default_and_official(release):
    it = next(i for i in release["description"] if i.options["B"] != i.options["B"].strip())
    raw = template("description", 1).format(*[it.options[x] for x in "ABCD"])
    assert build_prompt(it, 1, official_whitespace=True) == raw  # byte-exact upstream string
    stripped = build_prompt(it, 1)
    assert stripped != raw and "(B) " + it.options["B"].strip() + " (C)" in stripped
    assert build_prompt(it, 2, description="a dog").startswith("Description: a dog\nSelect the appropriate")


def test_rotation_moves_gold(release):
    it = release["title"][0]
    for r in range(4):
        opts = it.option_list(rotation=r)
        assert opts["ABCD".index(it.gold(r))] == it.options[it.answer].strip()


def test_blind_baselines_on_release(release):
    want = {  # measured on the release (wave2-methods.md 1(b)); shortest/longest/only-unpadded match it exactly
        "description": {"shortest": 25.8, "longest": 27.5, "only_unpadded": 98.8},
        "title": {"shortest": 29.2, "longest": 24.5, "least_similar": 31.1},
        "deep_semantics": {"shortest": 44.1, "longest": 13.3, "least_similar": 43.6},
    }
    for s, w in want.items():
        rows = {r["baseline"]: r for r in blind_baselines(release[s])}
        for name, acc in w.items():
            assert round(rows[name]["accuracy"], 1) == acc, (s, name)
        assert rows["chance"]["accuracy"] == 25.0
    assert {r["baseline"]: r["applicable"] for r in blind_baselines(release["title"])}["only_unpadded"] == 0


def test_bad_files(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps({"Image_ID": "Img1", "Options": {"A": "x", "B": "y", "C": "z", "D": "w"}}) + "\n")
    with pytest.raises(LmlabError, match=r"q.json:1: missing field 'Answer'"):
        read_questions(p, "title")
    p.write_text("{not json\n")
    with pytest.raises(LmlabError, match=r"q.json:1: invalid JSON"):
        read_questions(p, "title")
    with pytest.raises(LmlabError, match="unknown subtask 'colour'"):
        read_questions(p, "colour")
    with pytest.raises(LmlabError, match="not a folder"):
        load_subtask("title", tmp_path / "nope")
    good = {"Image_ID": "I", "Options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "Answer": "E"}
    p.write_text(json.dumps(good) + "\n")
    with pytest.raises(LmlabError, match="'Answer' is 'E'"):
        read_questions(p, "title")
