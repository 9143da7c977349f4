"""Reading and writing AMR corpora (PENMAN blocks with `# ::` metadata) on top of `penman`.

Every graph keeps its metadata (`# ::id`, `# ::snt`, ...) and tolerates `~e.N` alignments: the alignments are
stripped from the tree (so linearizations, Smatch and the triples never see them) but the source text is kept
verbatim in `AmrGraph.text`. Bad input becomes one `LmlabError` naming the file and the graph id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import penman
from penman import layout
from penman.models import amr as amr_model

from lmlab.core.errors import LmlabError
from lmlab.core.paths import atomic_write_text

MODEL = amr_model.model
# penman's alignment syntax: ~e.1,2 / ~1 / ~e.3.4 appended to a concept, role or constant.
_ALIGN = re.compile(r"~(?:[a-zA-Z]\.?)?\d+(?:[.,]\d+)*$")
# A role is ':' + non-space; penman accepts anything, AMR roles are letters, digits, '-' and '.'.
_ROLE_OK = re.compile(r"^:[A-Za-z][A-Za-z0-9\-.]*$")


@dataclass
class AmrGraph:
    """One corpus entry: its id, metadata (ordered), the alignment-free penman tree, the original text."""

    id: str
    metadata: dict[str, str]
    tree: penman.Tree
    text: str = ""
    status: list[str] = field(default_factory=list)  # repairs made when this graph was decoded

    @property
    def sentence(self) -> str:
        return self.metadata.get("snt", "")

    def graph(self) -> penman.Graph:
        """The graph (triples, AMR role inversions normalised) of the tree."""
        return layout.interpret(self.tree, MODEL)

    def penman(self, indent: int | None = 6) -> str:
        return penman.format(self.tree, indent=indent)


def strip_alignment(s: str) -> str:
    """`boy~e.2` -> `boy`; a quoted constant keeps its content (`"a~b"~e.3` -> `"a~b"`)."""
    if s.startswith('"'):
        end = s.rfind('"')
        return s[: end + 1] if end > 0 else s
    return _ALIGN.sub("", s)


def _clean_tree(node: penman.tree.Node, where: str) -> penman.tree.Node:
    var, branches = node
    out = []
    for role, target in branches:
        if role != "/":
            role = strip_alignment(role)
            if not _ROLE_OK.match(role):
                raise LmlabError(f"{where}: unknown role {role!r} on node {var!r}", hint="AMR roles look like :ARG0")
        if isinstance(target, tuple):
            target = _clean_tree(target, where)
        elif target is None:
            raise LmlabError(f"{where}: role {role!r} on node {var!r} has no value", hint="give every role a value")
        else:
            target = strip_alignment(target)
        out.append((role, target))
    return (var, out)


def parse_graph(text: str, where: str = "<string>", metadata: dict[str, str] | None = None) -> AmrGraph:
    """One PENMAN string (with or without `# ::` lines) -> AmrGraph; errors name `where` and the graph id."""
    meta = dict(metadata or {})
    body = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            meta.update(_metadata(line))
        else:
            body.append(line)
    src = "\n".join(body).strip()
    gid = meta.get("id", "?")
    here = f"{where}: graph {gid}"
    if not src:
        raise LmlabError(f"{here}: no graph after the metadata", hint="each block needs a PENMAN graph")
    if src.count("(") != src.count(")") and '"' not in src:
        raise LmlabError(f"{here}: unbalanced brackets ({src.count('(')} '(' vs {src.count(')')} ')')")
    try:
        trees = list(penman.iterparse(src))
    except penman.DecodeError as e:
        raise LmlabError(f"{here}: not valid PENMAN ({str(e).splitlines()[-1].strip()})") from None
    if len(trees) != 1:
        raise LmlabError(f"{here}: expected one graph, found {len(trees)}", hint="separate graphs with a blank line")
    tree = penman.Tree(_clean_tree(trees[0].node, here))
    return AmrGraph(id=gid, metadata=meta, tree=tree, text=text)


def _metadata(line: str) -> dict[str, str]:
    """`# ::id x ::snt Hello .` -> {'id': 'x', 'snt': 'Hello .'} (a value runs to the next ` ::key`)."""
    out: dict[str, str] = {}
    for part in re.split(r"(?:^|\s)::", line.lstrip("# ").rstrip())[1:] if "::" in line else []:
        key, _, value = part.partition(" ")
        if key:
            out[key] = value.strip()
    return out


def read_amr(path: str | Path) -> list[AmrGraph]:
    """All graphs of an AMR file (blank-line separated blocks; `#` lines are metadata)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: no such AMR file")
    text = path.read_text(encoding="utf-8")
    graphs = []
    for i, block in enumerate(re.split(r"\n\s*\n", text)):
        if not block.strip():
            continue
        if all(ln.lstrip().startswith("#") for ln in block.strip().splitlines()):
            continue  # a comment-only block (file header)
        g = parse_graph(block, where=str(path))
        if g.id == "?":
            g.id = f"{path.stem}#{i + 1}"
        graphs.append(g)
    if not graphs:
        raise LmlabError(f"{path}: no AMR graphs in the file", hint="expected blank-line separated PENMAN blocks")
    return graphs


def format_graph(g: AmrGraph) -> str:
    meta = "".join(f"# ::{k} {v}\n" for k, v in g.metadata.items())
    if g.status and "status" not in g.metadata:
        meta += f"# ::status {'; '.join(g.status)}\n"
    return meta + g.penman()


def write_amr(path: str | Path, graphs: list[AmrGraph]) -> None:
    """Write graphs with their metadata, atomically."""
    atomic_write_text(Path(path), "\n\n".join(format_graph(g) for g in graphs) + "\n")


def one_line(g: AmrGraph | penman.Tree) -> str:
    """A single-line PENMAN string (what snowblink smatch reads)."""
    tree = g.tree if isinstance(g, AmrGraph) else g
    return penman.format(tree, indent=None)
