"""Taxonomy YAML: round trip, the built-in file, and one-line errors naming the line."""

from __future__ import annotations

import pytest

from lmlab.core.errors import LmlabError
from lmlab.glan.taxonomy import Discipline, load_taxonomy, save_taxonomy


def test_builtin_and_round_trip(tmp_path):
    discs = load_taxonomy()
    assert len(discs) >= 10 and len({d.field for d in discs}) >= 3
    discs.append(Discipline("Arts", "Music", "Music Theory"))  # adding a node adds a skill
    save_taxonomy(discs, tmp_path / "t.yaml")
    assert load_taxonomy(tmp_path / "t.yaml") == discs


@pytest.mark.parametrize(
    "text,line,what",
    [
        ("Sciences:\n  Physics: Mechanics\n", 2, "non-empty list"),
        ("Sciences:\n  Physics: [Mechanics]\nArts: [Music]\n", 3, "must map sub-fields"),
        ("Sciences:\n  Physics: [Mechanics\n", 3, "invalid YAML"),
        ("Sciences:\n  Physics:\n    - Mechanics\n    - ''\n", 4, "non-empty string"),
    ],
)
def test_errors_name_the_line(tmp_path, text, line, what):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(LmlabError, match=rf"bad.yaml:{line}: .*{what}"):
        load_taxonomy(p)


def test_generated_taxonomy_round_trips_through_yaml(tmp_path):
    from lmlab.core.llmcache import LLMCache
    from lmlab.glan.pipeline import Caller
    from lmlab.glan.taxonomy import generate_taxonomy

    from .scripted import ScriptedBackend

    caller = Caller(ScriptedBackend(), LLMCache(tmp_path / "c.sqlite"))
    discs = generate_taxonomy(caller, ["Natural Sciences", "Humanities"], max_subfields=2, max_disciplines=2)
    assert {d.field for d in discs} == {"Natural Sciences", "Humanities"}
    assert len({d.name.casefold() for d in discs}) == len(discs)  # unique across the tree
    save_taxonomy(discs, tmp_path / "gen.yaml")
    assert load_taxonomy(tmp_path / "gen.yaml") == discs


def test_cli_bad_taxonomy_is_one_line_exit_2(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "bad.yaml"
    p.write_text("Sciences:\n  Physics: Mechanics\n")
    r = subprocess.run(
        [sys.executable, "-m", "lmlab.cli", "glan", "run", "--taxonomy", str(p), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "bad.yaml:2" in r.stderr
