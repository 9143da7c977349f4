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


@pytest.mark.parametrize("text,line,what", [
    ("Sciences:\n  Physics: Mechanics\n", 2, "non-empty list"),
    ("Sciences:\n  Physics: [Mechanics]\nArts: [Music]\n", 3, "must map sub-fields"),
    ("Sciences:\n  Physics: [Mechanics\n", 3, "invalid YAML"),
    ("Sciences:\n  Physics:\n    - Mechanics\n    - ''\n", 4, "non-empty string"),
])
def test_errors_name_the_line(tmp_path, text, line, what):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(LmlabError, match=rf"bad.yaml:{line}: .*{what}"):
        load_taxonomy(p)
