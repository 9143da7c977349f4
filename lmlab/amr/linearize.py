"""Graph <-> token sequence: the default DFS linearization with pointer tokens (`dfs_NLR`, SPRING/AMRBART style)
and RGL's reversed one (`dfs_NRL`, paper section 3.1), and a decoder that always returns a valid graph.

NLR: `( <pointer:0> establish-01 :ARG1 ( <pointer:1> model ... ) )`: variables become `<pointer:k>` numbered by
first mention, `/` is dropped, a re-entrancy is a bare pointer, constants stay as written (a constant with spaces
becomes `<lit> New York </lit>`), `:wiki` is kept.

NRL (`reverse_tree`): every node's branches in reverse order, then penman re-lays the graph out
(`layout.interpret` + `layout.reconfigure`), so a re-entrant node is expanded at its first occurrence in the new
order and edges back to an ancestor are written inverted. This is the recipe that reproduces the authors' released
NRL strings (82/100 and 91/100 exactly, the rest graph-identical; design notes section 2(a)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import penman
from penman import layout

from .graphs import MODEL

ORDERS = ("nlr", "nrl")
POINTER = re.compile(r"^<pointer:(\d+)>$")
LIT_OPEN, LIT_CLOSE = "<lit>", "</lit>"


def pointer(k: int) -> str:
    return f"<pointer:{k}>"


def reverse_tree(tree: penman.Tree) -> penman.Tree:
    """RGL's reversal: reverse each node's branches ('/' stays first), then let penman re-lay the graph out."""

    def rev(node):
        var, branches = node
        concept = [b for b in branches if b[0] == "/"]
        rest = [(r, rev(t) if isinstance(t, tuple) else t) for r, t in branches if r != "/"]
        return (var, concept + rest[::-1])

    g = layout.interpret(penman.Tree(rev(tree.node)), MODEL)
    return layout.reconfigure(g, model=MODEL)


def order_tree(tree: penman.Tree, order: str) -> penman.Tree:
    if order == "nlr":
        return tree
    if order == "nrl":
        return reverse_tree(tree)
    raise ValueError(f"unknown linearization order {order!r} (choose from {ORDERS})")


@dataclass
class Linearization:
    tokens: list[str]
    varmap: dict[str, int]  # tree variable -> pointer number
    positions: list[int] = field(default_factory=list)  # token index of each branch, in penman's triple order


def _constant_tokens(value: str) -> list[str]:
    if value.startswith('"') and any(c.isspace() for c in value):
        return [LIT_OPEN, *value[1:-1].split(), LIT_CLOSE]
    return [value]


def linearize_tree(tree: penman.Tree) -> Linearization:
    """Depth-first, branches in tree order. `positions[i]` is the index of the token that carries the i-th
    triple of `layout.interpret(tree)` (the concept for an instance, the role for an edge or attribute)."""
    variables = {v for v, _ in tree.nodes()}
    varmap: dict[str, int] = {}
    toks: list[str] = []
    pos: list[int] = []

    def ref(v: str) -> str:
        if v not in varmap:
            varmap[v] = len(varmap)
        return pointer(varmap[v])

    def walk(node) -> None:
        var, branches = node
        toks.append("(")
        toks.append(ref(var))
        has_concept = any(r == "/" for r, _ in branches)
        if not has_concept:
            pos.append(len(toks) - 1)  # interpret adds (var, :instance, None): carried by the pointer
        for role, target in branches:
            if role == "/":
                pos.append(len(toks))
                toks.append(target if target is not None else "thing")
                continue
            pos.append(len(toks))
            toks.append(role)
            if isinstance(target, tuple):
                walk(target)
            elif target in variables:
                toks.append(ref(target))
            else:
                toks.extend(_constant_tokens(target))
        toks.append(")")

    walk(tree.node)
    return Linearization(toks, varmap, pos)


def linearize(tree: penman.Tree, order: str = "nlr") -> list[str]:
    return linearize_tree(order_tree(tree, order)).tokens


@dataclass
class Decoded:
    tree: penman.Tree
    repairs: list[str]

    @property
    def ok(self) -> bool:
        return not self.repairs


BACKOFF = "(z0 / amr-empty)"


def delinearize(tokens: list[str] | str) -> Decoded:
    """Tokens -> a valid penman tree with variables z<k>; never fails. Anything malformed is repaired and each
    repair named in `repairs` (empty list: the sequence was well formed)."""
    if isinstance(tokens, str):
        tokens = tokens.split()
    repairs: list[str] = []
    defined: set[str] = set()
    fresh = [max([int(m.group(1)) for t in tokens if (m := POINTER.match(t))] + [-1]) + 1]
    i = 0
    n = len(tokens)

    def new_var() -> str:
        v = f"z{fresh[0]}"
        fresh[0] += 1
        return v

    def parse_node():
        nonlocal i
        i += 1  # '('
        var = None
        if i < n and (m := POINTER.match(tokens[i])):
            var = f"z{m.group(1)}"
            i += 1
            if var in defined:
                repairs.append(f"pointer {tokens[i - 1]} defined twice")
                var = new_var()
        else:
            repairs.append("node without pointer")
            var = new_var()
        defined.add(var)
        branches: list = []
        if i < n and tokens[i] not in ("(", ")") and not tokens[i].startswith(":") and not POINTER.match(tokens[i]):
            branches.append(("/", tokens[i]))
            i += 1
        else:
            repairs.append(f"node {var} without concept")
            branches.append(("/", "thing"))
        while i < n:
            tok = tokens[i]
            if tok == ")":
                i += 1
                return (var, branches)
            if not (tok.startswith(":") and len(tok) > 1):
                repairs.append(f"stray token {tok!r}")
                i += 1
                continue
            role = tok
            i += 1
            if i >= n or tokens[i] == ")" or (tokens[i].startswith(":") and len(tokens[i]) > 1):
                repairs.append(f"role {role} without value")
                continue
            tok = tokens[i]
            if tok == "(":
                branches.append((role, parse_node()))
            elif m := POINTER.match(tok):
                branches.append((role, f"z{m.group(1)}"))
                i += 1
            elif tok == LIT_OPEN:
                j = i + 1
                while j < n and tokens[j] not in (LIT_CLOSE, ")", "(") and not tokens[j].startswith(":"):
                    j += 1
                words = tokens[i + 1 : j]
                if j >= n or tokens[j] != LIT_CLOSE:
                    repairs.append("unclosed <lit>")
                    i = j
                else:
                    i = j + 1
                branches.append((role, '"' + " ".join(words) + '"' if words else '"_"'))
            elif tok == LIT_CLOSE:
                repairs.append("stray </lit>")
                i += 1
            else:
                branches.append((role, tok))
                i += 1
        repairs.append(f"closed node {var} at end of sequence")
        return (var, branches)

    roots = []
    while i < n:
        if tokens[i] == "(":
            roots.append(parse_node())
        else:
            if tokens[i] not in ("</AMR>",):
                repairs.append(f"stray token {tokens[i]!r} outside the graph")
            i += 1
    if not roots:
        return Decoded(penman.parse(BACKOFF), _collapse(repairs + ["empty graph: backoff"]))
    if len(roots) > 1:
        repairs.append(f"{len(roots)} fragments joined under multi-sentence")
        root = (new_var(), [("/", "multi-sentence")] + [(f":snt{k + 1}", r) for k, r in enumerate(roots)])
    else:
        root = roots[0]

    def drop_undefined(node):
        var, branches = node
        out = []
        for role, t in branches:
            if isinstance(t, tuple):
                out.append((role, drop_undefined(t)))
            elif role != "/" and re.fullmatch(r"z\d+", t) and t not in defined:
                repairs.append(f"edge {role} to undefined pointer dropped")
            else:
                out.append((role, t))
        return (var, out)

    tree = penman.Tree(drop_undefined(root))
    repairs = _collapse(repairs)
    try:
        penman.decode(penman.format(tree), model=MODEL)
    except Exception as e:  # noqa: BLE001 - any failure of the reference parser means: back off
        return Decoded(penman.parse(BACKOFF), repairs + [f"unreadable graph ({type(e).__name__}): backoff"])
    return Decoded(tree, repairs)


def _collapse(repairs: list[str]) -> list[str]:
    """Repeated repairs once, with a count ("stray token ')' outside the graph x37")."""
    counts: dict[str, int] = {}
    for r in repairs:
        counts[r] = counts.get(r, 0) + 1
    return [r if n == 1 else f"{r} x{n}" for r, n in counts.items()]


def canonical_triples(tree: penman.Tree) -> tuple[str, list[tuple]]:
    """(top, sorted triples) with variables renamed to pointer numbers of the tree's own NLR walk."""
    lin = linearize_tree(tree)
    g = layout.interpret(tree, MODEL)
    name = {v: f"z{k}" for v, k in lin.varmap.items()}
    trip = sorted((name.get(s, s), r, name.get(t, t) if t is not None else "") for s, r, t in g.triples)
    return name[g.top], trip
