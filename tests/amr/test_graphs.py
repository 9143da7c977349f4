"""AMR file reading/writing and one-line errors for bad input."""

from __future__ import annotations

import pytest

from lmlab.amr.graphs import read_amr, write_amr
from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data


def test_write_read_keeps_metadata_and_graphs(tmp_path):
    gs = read_amr(shared_data("amr_little_prince", "lpp-v3.0-test.txt"))
    write_amr(tmp_path / "x.txt", gs)
    back = read_amr(tmp_path / "x.txt")
    assert [g.id for g in back] == [g.id for g in gs]
    assert [g.metadata for g in back] == [g.metadata for g in gs]
    assert [g.graph().triples for g in back] == [g.graph().triples for g in gs]


@pytest.mark.parametrize(
    "text,needle",
    [
        ("# ::id g7\n(a / b :ARG0 (c / d)", "graph g7"),
        ("# ::id g8\n(a / b :ARG0 (c / d)))", "graph g8"),
        ("# ::id g9\n(a / b :AR!G0 (c / d))", "unknown role"),
        ("# ::id g10\n# ::snt only metadata\n", None),
        ("", "no AMR graphs"),
    ],
)
def test_bad_input_is_one_line_error_naming_graph(tmp_path, text, needle):
    p = tmp_path / "bad.txt"
    p.write_text("# ::id ok\n(o / ok)\n\n" + text if needle and needle.startswith(("graph", "unknown")) else text)
    if needle is None:
        with pytest.raises(LmlabError, match="no AMR graphs"):
            read_amr(p)
        return
    with pytest.raises(LmlabError) as e:
        read_amr(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and needle in msg
