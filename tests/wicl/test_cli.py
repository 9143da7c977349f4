"""`lmlab wicl` commands: JSON lines with weights per seed, resumable output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from lmlab.cli import app
from lmlab.core.errors import LmlabError


def _data(tmp_path):
    p = tmp_path / "reviews.jsonl"
    rows = [
        {"review": f"{w} film number {i} .", "y": "neg" if w == "awful" else "pos"}
        for i in range(12)
        for w in ("awful", "great")
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_run_on_a_user_file_writes_weights_per_seed(tmp_path, smollm):
    p, out = _data(tmp_path), tmp_path / "runs.jsonl"
    args = [
        "wicl",
        "run",
        "--data",
        str(p),
        "--template",
        "Review: {review} Sentiment:",
        "--labels",
        "neg,pos",
        "--label-field",
        "y",
    ]
    args += ["--label-words", "negative,positive", "--shots", "2", "--seeds", "1", "--eval-n", "4", "--val-n", "0"]
    args += ["--placement", "saw", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 1 and len(recs[0]["saw"]["weights"]) == 2 and recs[0]["seed"] == 0
    assert set(recs[0]["saw"]["weights"]) <= {0.9, 1.0, 1.1}
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["placement"] == "saw" and summary["n_seeds"] == 1
    r2 = CliRunner().invoke(app, args)  # resumable: the finished seed is not run again
    assert r2.exit_code == 0 and len(out.read_text().splitlines()) == 1


def test_errors_are_one_line(tmp_path):
    p = _data(tmp_path)
    cases = [
        (["wicl", "run", "--task", "nope"], "unknown task"),
        (
            ["wicl", "run", "--data", str(p), "--template", "Review: {text} Sentiment:", "--label-field", "y"],
            "missing field 'text'",
        ),
        (
            [
                "wicl",
                "run",
                "--data",
                str(p),
                "--template",
                "Review: {review} S:",
                "--labels",
                "neg,meh",
                "--label-field",
                "y",
            ],
            "unknown label 'pos'",
        ),
        (["wicl", "run", "--task", "sst2", "--placement", "middle", "--seeds", "1"], "unknown placement"),
    ]
    for args, msg in cases:
        r = CliRunner().invoke(app, args)
        assert isinstance(r.exception, LmlabError) and msg in str(r.exception), (args, r.output)
    # through the real entry point: one line on stderr, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", *cases[0][0]], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown task" in proc.stderr and "Traceback" not in proc.stderr
