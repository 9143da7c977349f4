import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from lmlab.core.errors import LmlabError
from lmlab.socratic.cli import register
from lmlab.socratic.tree import load_tree

from .fakes import FakeOpenAIServer


@pytest.fixture(scope="module")
def server():
    srv = FakeOpenAIServer(delay=0.0)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)
    return a


def test_plan_file_runs_branches_and_excerpts(app, server, tmp_path):
    plan = tmp_path / "plan.jsonl"
    steps = [
        {"id": "a", "pattern": "decomposition", "prompt": "Split it. Answer with a numbered list."},
        {"id": "b", "prompt": "Solve part one.", "excerpt": "1. Find the first part."},
        {"id": "c", "pattern": "verification", "after": "a", "prompt": "Check it."},
        {"id": "d", "pattern": "integration", "fresh": True, "prompt": "Summarize."},
    ]
    plan.write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    out = tmp_path / "run"
    args = ["socratic", "run", "--plan", str(plan), "--backend", server.url, "--model", "m", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    tree = load_tree(out / "tree.jsonl")
    assert [t.parent for t in tree] == [None, "a", "a", None]
    assert tree["b"].messages[2] == {"role": "assistant", "content": "1. Find the first part."}
    assert tree["b"].context[2] == {"kind": "excerpt", "turn": "a"}
    assert tree["c"].messages[2]["content"] == tree["a"].reply and [t.id for t in tree.branches()] == ["c"]
    assert tree["d"].fresh and tree.stops[-1]["reason"] == "done"
    n = server.requests
    r = CliRunner().invoke(app, args)  # rerun: everything from the tree + cache
    assert r.exit_code == 0 and server.requests == n


@pytest.mark.parametrize(
    "line,msg",
    [
        ('{"prompt": "x", "pattern": "guess"}', "unknown pattern 'guess'"),
        ('{"prompt": "x", "after": "zz"}', "'after' names 'zz'"),
        ("{not json", "not valid JSON"),
        ('{"prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"prompt": "x", "colour": 1}', "unknown field 'colour'"),
    ],
)
def test_malformed_plan_names_the_line(app, tmp_path, line, msg):
    plan = tmp_path / "p.jsonl"
    plan.write_text('{"prompt": "fine"}\n' + line + "\n")
    r = CliRunner().invoke(app, ["socratic", "run", "--plan", str(plan)])
    assert isinstance(r.exception, LmlabError) and f"p.jsonl:2: {msg}" in str(r.exception)


def test_cli_error_is_one_line_exit_2(tmp_path):
    plan = tmp_path / "p.jsonl"
    plan.write_text('{"prompt": "x", "pattern": "guess"}\n')
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "socratic", "run", "--plan", str(plan)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "p.jsonl:1: unknown pattern" in r.stderr


def test_interactive_approval_hook_edits_and_stops(app, server, tmp_path):
    out = tmp_path / "run"
    # decomposition: edit its prompt, then send; first sub-problem: send; second: stop
    r = CliRunner().invoke(
        app,
        [
            "socratic",
            "run",
            "2+3?",
            "-i",
            "--backend",
            server.url,
            "--model",
            "m",
            "--out",
            str(out),
            "--verify",
            "none",
        ],
        input="e\nSplit 2+3 into parts. Answer with a numbered list.\n\n\nx\n",
    )
    assert r.exit_code == 0, r.output
    tree = load_tree(out / "tree.jsonl")
    d = tree["p/decompose"]
    assert (
        d.prompt.startswith("Split 2+3")
        and d.edits[0]["by"] == "human"
        and "Split this problem" in d.edits[0]["before"]
    )
    assert tree.stops[-1]["reason"] == "human_stop" and tree["p.2/deduce"].reply is None


def _expect(fd, pattern, buf, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        m = re.search(pattern, buf[0])
        if m:
            buf[0] = buf[0][m.end() :]
            return m
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            try:
                buf[0] += os.read(fd, 65536).decode(errors="replace")
            except OSError:
                break
    raise AssertionError(f"no {pattern!r} in {buf[0][-500:]!r}")


def test_interactive_session_through_a_pseudo_terminal(server, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "lmlab.cli", "socratic", "run", "-i", "-b", server.url, "-m", "m", "-o", str(out)]
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    buf = [""]

    def send(line, then):
        os.write(master, (line + "\n").encode())
        return _expect(master, then, buf)

    try:
        _expect(master, r"socratic\[fresh\]> ", buf)
        send("ask decomposition: Split 2+3. Answer with a numbered list.", r"socratic\[s1\]> ")
        send("excerpt 1. Find the first part.", r"carries .*\n.*socratic\[s1\]> ")
        send("ask Solve this one.", r"socratic\[s2\]> ")
        send("branch s1", r"socratic\[s1\]> ")
        send("ask verification: Please check it.", r"socratic\[s3\]> ")
        send("edit s3 Please check it again, carefully.", r"socratic\[s4\]> ")
        send("stop", r"stopped")
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
    tree = load_tree(out / "tree.jsonl")
    assert tree["s2"].context[2] == {"kind": "excerpt", "turn": "s1"}
    assert tree["s3"].parent == "s1" and [t.id for t in tree.branches()] == ["s3", "s4"]
    assert tree["s4"].prompt == "Please check it again, carefully." and tree["s4"].edits
    assert tree.stops[-1]["reason"] == "human_stop"


def test_replay_and_view_commands(app, tmp_path):
    r = CliRunner().invoke(app, ["socratic", "replay", "--out", str(tmp_path / "rp")])
    assert r.exit_code == 0, r.output
    assert "identical to the transcript: 97/97" in r.output and '"fresh_context_turns": 39' in r.output
    tree_path = tmp_path / "rp" / "tree.jsonl"
    html, mmd, dot = tmp_path / "t.html", tmp_path / "t.mmd", tmp_path / "t.dot"
    r = CliRunner().invoke(
        app, ["socratic", "view", str(tree_path), "--html", str(html), "--mermaid", str(mmd), "--dot", str(dot)]
    )
    assert r.exit_code == 0, r.output
    edges = sum(t.parent is not None for t in load_tree(tree_path))
    assert edges == 97 - 40  # 39 fresh restarts + 1 turn whose carried assistant text a person wrote
    assert mmd.read_text().startswith("graph TD") and mmd.read_text().count("-->") == edges
    assert dot.read_text().count("->") == edges and "http" not in html.read_text()
