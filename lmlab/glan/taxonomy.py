"""The taxonomy of human knowledge (GLAN section 2.1): fields -> sub-fields -> disciplines, kept as an
editable YAML file. The paper built it with GPT-4 and human review; `generate_taxonomy` does the GPT-4
part with any backend, and the YAML file is the review step (add a discipline to add a skill)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..core.errors import LmlabError
from ..core.paths import atomic_write_text

if TYPE_CHECKING:
    from .pipeline import Caller

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")


@dataclass(frozen=True)
class Discipline:
    field: str
    subfield: str
    name: str


def _where(path: Path, node: yaml.Node) -> str:
    return f"{path}:{node.start_mark.line + 1}"


def load_taxonomy(path: str | Path = DEFAULT_TAXONOMY) -> list[Discipline]:
    """Parse `field: {subfield: [discipline, ...]}`; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(
            f"{path}: taxonomy file not found", hint="pass --taxonomy FILE, or omit it for the built-in one"
        )
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise LmlabError(
            f"{path}:{mark.line + 1 if mark else '?'}: invalid YAML ({getattr(e, 'problem', e)})"
        ) from None
    if not isinstance(root, yaml.MappingNode) or not root.value:
        raise LmlabError(
            f"{path}:1: expected a mapping of fields", hint="e.g. 'Natural Sciences: {Physics: [Mechanics]}'"
        )
    out: list[Discipline] = []
    for fkey, fval in root.value:
        if not isinstance(fval, yaml.MappingNode):
            raise LmlabError(f"{_where(path, fval)}: field {fkey.value!r} must map sub-fields to discipline lists")
        for skey, sval in fval.value:
            if not isinstance(sval, yaml.SequenceNode) or not sval.value:
                raise LmlabError(
                    f"{_where(path, sval)}: sub-field {skey.value!r} must be a non-empty list of disciplines"
                )
            for d in sval.value:
                if not isinstance(d, yaml.ScalarNode) or not str(d.value).strip():
                    raise LmlabError(f"{_where(path, d)}: a discipline must be a non-empty string")
                out.append(Discipline(str(fkey.value), str(skey.value), str(d.value).strip()))
    seen: set[str] = set()
    for d in out:
        if d.name.casefold() in seen:
            raise LmlabError(f"{path}: discipline {d.name!r} appears twice", hint="each discipline once")
        seen.add(d.name.casefold())
    return out


def save_taxonomy(disciplines: list[Discipline], path: str | Path) -> None:
    tree: dict[str, dict[str, list[str]]] = {}
    for d in disciplines:
        tree.setdefault(d.field, {}).setdefault(d.subfield, []).append(d.name)
    atomic_write_text(
        Path(path),
        "# GLAN taxonomy: field -> sub-field -> disciplines. Edit freely.\n"
        + yaml.safe_dump(tree, sort_keys=False, allow_unicode=True),
    )


def generate_taxonomy(
    caller: Caller, fields: list[str], max_subfields: int = 4, max_disciplines: int = 4
) -> list[Discipline]:
    """Ask the model for sub-fields of each field, then disciplines of each sub-field (cached, resumable)."""
    from .prompts import disciplines_prompt, subfields_prompt
    from .schemas import NameList

    subs = caller.run("taxonomy", [(subfields_prompt(f), 0) for f in fields], NameList, temperature=0.0, max_tokens=160)
    pairs = [(f, s) for f, r in zip(fields, subs) if r for s in _unique(r.names)[:max_subfields]]
    discs = caller.run(
        "taxonomy", [(disciplines_prompt(f, s), 0) for f, s in pairs], NameList, temperature=0.0, max_tokens=160
    )
    out, seen = [], set()
    for (f, s), r in zip(pairs, discs):
        for name in _unique(r.names if r else [])[:max_disciplines]:
            if name.casefold() not in seen:
                seen.add(name.casefold())
                out.append(Discipline(f, s, name))
    return out


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for n in (x.strip() for x in names):
        if n and n.casefold() not in seen:
            seen.add(n.casefold())
            out.append(n)
    return out
