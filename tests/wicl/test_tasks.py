"""Task loaders (official templates, label orders, recorded splits), user files, sampling, one-line errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmlab.core.errors import LmlabError
from lmlab.wicl.tasks import TASKS, Template, load_task, load_user_task, sample_demos


def _find(task, needle):
    return next(e for e in task.train + task.test if needle in e.fields["text"])


@pytest.mark.parametrize("name", TASKS)
def test_every_task_loads(name):
    t = load_task(name)
    assert len(t.train) >= 2000 and len(t.test) >= 250
    assert {e.label for e in t.train} == set(range(t.num_labels))
    assert set(t.template.fields()) <= set(t.train[0].fields)
    d = t.template.demo(t.train[0])
    assert d.endswith(t.template.answers()[t.train[0].label] + " \n ")


def test_label_orders_follow_the_official_code():
    trec, db, subj = load_task("trec"), load_task("dbpedia"), load_task("subj")
    assert trec.template.labels[_find(trec, "What is the full form of .com").label] == "Expression"  # ABBR
    assert trec.template.labels[_find(trec, "How did serfdom develop").label] == "Description"
    assert db.template.labels[_find(db, "is a village in the municipality of Blace").label] == "village"
    assert (
        subj.template.labels[_find(subj, "thirteen conversations about one thing is a small gem").label] == "subjective"
    )
    rte = load_task("rte")
    assert rte.template.labels[rte.train[1].label] == "True"  # entailment


def test_unsplit_sets_split_by_recorded_seed():
    a, b, c = load_task("mr"), load_task("mr"), load_task("mr", split_seed=1)
    assert a.meta["split_seed"] == 0 and len(a.test) == 1066
    assert [e.fields for e in a.test] == [e.fields for e in b.test]
    assert [e.fields for e in a.test] != [e.fields for e in c.test]
    assert len(a.train) + len(a.test) == 10662
    assert any("\xe9" in e.fields["text"] for e in a.train + a.test)  # Latin-1 decoded (e.g. "café")


def test_sampling_seeded_and_balanced():
    t = load_task("agnews")
    assert sample_demos(t.train, 8, 3) == sample_demos(t.train, 8, 3) != sample_demos(t.train, 8, 4)
    bal = sample_demos(t.train, 8, 5, balanced=True)
    assert Counter(t.train[i].label for i in bal) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert not set(sample_demos(t.train, 8, 5, exclude=set(bal))) & set(bal)


def test_user_jsonl_and_csv(tmp_path):
    rows = [{"text": f"item {i}", "label": "spam" if i % 2 else "ham"} for i in range(20)]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    t = load_user_task(p, template="Message: {text} Class:")
    assert t.template.labels == ("ham", "spam") and t.meta["split_seed"] == 0 and len(t.test) == 4
    c = tmp_path / "d.csv"
    c.write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    t2 = load_user_task(c, template="Message: {text} Class:", labels=["spam", "ham"], label_words=["bad", "good"])
    assert t2.template.labels == ("bad", "good")
    assert t2.template.labels[next(e for e in t2.train + t2.test if e.fields["text"] == "item 1").label] == "bad"


def test_one_line_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": "z"}\n')
    with pytest.raises(LmlabError, match=r"d.jsonl:3: unknown label 'z'"):
        load_user_task(p, labels=["x", "y"])
    with pytest.raises(LmlabError, match="no \\{field\\} placeholder"):
        load_user_task(p, template="no placeholder")
    with pytest.raises(LmlabError, match="missing field 'body'"):
        load_user_task(p, template="Body: {body} Label:")
    with pytest.raises(LmlabError, match="bad template"):
        Template("Input: {text Label:", " {answer}", ("a", "b")).check()
    with pytest.raises(LmlabError, match="unknown task"):
        load_task("sst5")
