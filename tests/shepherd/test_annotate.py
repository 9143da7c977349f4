"""Monte-Carlo annotation: labels, exports in both formats, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmlab.shepherd.annotate import AnnotateConfig, _load_done, annotate, step_ends
from lmlab.shepherd.data import read_math_shepherd, read_solutions, read_trl
from lmlab.shepherd.world import make_problems


def test_step_ends():
    assert step_ends([5, 9, 1, 9, 2], {9}) == [2, 4, 5]
    assert step_ends([5, 9], {9}) == [2]
    assert step_ends([], {9}) == []


def test_annotate_outputs(tiny, tmp_path):
    probs = make_problems(3, seed=2)
    stats = annotate(tiny, probs, tmp_path, AnnotateConfig(n=3, samples=2, max_new_tokens=20), progress=False)
    assert stats["problems"] == 3 and stats["completions"] > 6
    sols = read_solutions(tmp_path / "solutions.jsonl")
    ms, trl = read_math_shepherd(tmp_path / "math_shepherd.jsonl"), read_trl(tmp_path / "trl.jsonl")
    assert (
        len(sols)
        == len(ms)
        == len(trl)
        == sum(len(json.loads(l)["solutions"]) for l in (tmp_path / "annotations.jsonl").read_text().splitlines())
    )
    for s, m, t in zip(sols, ms, trl):
        assert all(x * 3 == int(x * 3) and 0 <= x <= 1 for x in s.labels)  # fractions of n = 3
        hard = [float(x > 0) for x in s.labels]
        assert m.labels == hard and t.labels == hard
        assert s.labels[-1] == float(s.answer == s.gold)  # the last step is judged by its own answer
    again = annotate(tiny, probs, tmp_path, AnnotateConfig(n=3, samples=2, max_new_tokens=20), progress=False)
    assert again["new_problems"] == 0 and again["problems"] == 3


def test_torn_line_is_dropped(tmp_path):
    f = tmp_path / "annotations.jsonl"
    f.write_text('{"id": "a", "solutions": []}\n{"id": "b", "solu')
    assert list(_load_done(f)) == ["a"]
    assert f.read_text() == '{"id": "a", "solutions": []}\n'


def _cmd(ckpt, out):
    return [
        sys.executable,
        "-m",
        "lmlab.cli",
        "shepherd",
        "annotate",
        "--model",
        str(ckpt),
        "--out",
        str(out),
        "--problems",
        "30",
        "-n",
        "3",
        "--samples",
        "2",
        "--max-new-tokens",
        "24",
    ]


@pytest.mark.slow
def test_killed_run_resumes_without_redoing(tiny, tiny_ckpt, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = tmp_path / "resumed"
    proc = subprocess.Popen(_cmd(tiny_ckpt, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    store = out / "annotations.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (store.exists() and store.read_text().count("\n") >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store.read_text().count("\n")
    assert 3 <= before < 30, "the run finished before it could be killed"
    done = subprocess.run(_cmd(tiny_ckpt, out), env=env, capture_output=True, text=True, check=True)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["problems"] == 30 and stats["new_problems"] == 30 - before
    fresh = tmp_path / "fresh"  # uninterrupted, in-process, same settings as the CLI call
    annotate(tiny, make_problems(30, 0), fresh, AnnotateConfig(n=3, samples=2, max_new_tokens=24), progress=False)
    key = lambda f: sorted(f.read_text().splitlines())  # noqa: E731
    assert key(store) == key(fresh / "annotations.jsonl")  # per-problem seeding: resuming changes nothing
    assert (out / "math_shepherd.jsonl").read_text() == (fresh / "math_shepherd.jsonl").read_text()


def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmlab.cli",
            "shepherd",
            "annotate",
            "--out",
            str(tmp_path),
            "--source",
            str(tmp_path / "none.jsonl"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
