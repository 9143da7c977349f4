"""Round trips, reversal and repair of the linearizations (paper section 3.1)."""

from __future__ import annotations

import pytest

from lmlab.amr.graphs import parse_graph, read_amr
from lmlab.amr.linearize import canonical_triples, delinearize, linearize, linearize_tree, order_tree, reverse_tree
from lmlab.core.paths import shared_data

FILES = [
    ("amr_little_prince", "lpp-v3.0-train.txt"),
    ("amr_little_prince", "lpp-v3.0-dev.txt"),
    ("amr_little_prince", "lpp-v3.0-test.txt"),
    ("amr_bio", "amr-release-dev-bio.txt"),
    ("amr_bio", "amr-release-test-bio.txt"),
]


def _graph_identical(src_tree, order: str) -> bool:
    """Linearize in `order`, decode, and compare with the source graph as canonical labelled-triple multisets.

    Both sides are renamed by their own NLR walk only after mapping the decoded variables back through the
    linearization's pointer map, so equality here is equality of graphs (Smatch 1.0 up to the hill-climber):
    this is what we check instead of running Smatch per graph (2,562 smatch calls would take minutes)."""
    laid = order_tree(src_tree, order)
    lin = linearize_tree(laid)
    dec = delinearize(lin.tokens)
    assert dec.ok, dec.repairs
    back = {f"z{k}": v for v, k in lin.varmap.items()}
    from penman import layout

    from lmlab.amr.graphs import MODEL

    g_src = layout.interpret(src_tree, MODEL)
    g_dec = layout.interpret(dec.tree, MODEL)
    a = sorted((s, r, t) for s, r, t in g_src.triples)
    b = sorted((back.get(s, s), r, back.get(t, t)) for s, r, t in g_dec.triples)
    return a == b and g_src.top == back[g_dec.top]


@pytest.mark.parametrize("folder,name", FILES)
def test_round_trip_every_graph_both_orders(folder, name):
    graphs = read_amr(shared_data(folder, name))
    assert len(graphs) in (1274, 145, 143, 500)
    bad = [(g.id, o) for g in graphs for o in ("nlr", "nrl") if not _graph_identical(g.tree, o)]
    assert not bad, bad[:5]


def test_reverse_puts_last_branches_first_and_keeps_graph():
    g = parse_graph('(w / want-01 :ARG0 (b / boy) :ARG1 (g / go-01 :ARG0 b) :name (n / name :op1 "A" :op2 "B"))')
    nrl = " ".join(linearize(g.tree, "nrl"))
    assert nrl.startswith('( <pointer:0> want-01 :name ( <pointer:1> name :op2 "B" :op1 "A" )')
    # the re-entrant boy is now expanded at its first mention in the new order (inside go-01)
    assert ":ARG1 ( <pointer:2> go-01 :ARG0 ( <pointer:3> boy ) ) :ARG0 <pointer:3> )" in nrl
    assert canonical_triples(reverse_tree(g.tree))[1] != [] and _graph_identical(g.tree, "nrl")


def test_alignments_and_metadata_tolerated():
    g = parse_graph('# ::id x1 ::date now\n# ::snt The boy .\n(b / boy~e.1 :mod~e.0 (t / tall~e.2) :op1 "a b"~e.3)')
    assert g.id == "x1" and g.sentence == "The boy ." and g.metadata["date"] == "now"
    assert linearize(g.tree) == ["(", "<pointer:0>", "boy", ":mod", "(", "<pointer:1>", "tall", ")"] + [
        ":op1",
        "<lit>",
        "a",
        "b",
        "</lit>",
        ")",
    ]
    assert _graph_identical(g.tree, "nlr")


@pytest.mark.parametrize(
    "seq,repair",
    [
        ("( <pointer:0> want-01 :ARG0 ( <pointer:1> boy", "closed node"),
        ("( <pointer:0> want-01 :ARG0 <pointer:7> )", "undefined pointer"),
        ("( <pointer:0> want-01 :ARG0 )", "without value"),
        ("( <pointer:0> :ARG0 ( <pointer:1> boy ) )", "without concept"),
        ("( <pointer:0> a ) ( <pointer:1> b )", "multi-sentence"),
        ("", "backoff"),
        ("junk junk", "backoff"),
        ("( <pointer:0> a :op1 <lit> New York", "unclosed <lit>"),
    ],
)
def test_malformed_output_is_repaired_and_recorded(seq, repair):
    dec = delinearize(seq)
    assert any(repair in r for r in dec.repairs), dec.repairs
    import penman

    from lmlab.amr.graphs import MODEL

    assert penman.decode(penman.format(dec.tree), model=MODEL).triples  # a valid, non-empty graph


def test_well_formed_output_has_no_repairs():
    assert delinearize("( <pointer:0> a :ARG0 ( <pointer:1> b ) :ARG1 <pointer:1> )").repairs == []
