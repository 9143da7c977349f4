"""Readers for the DeepEval release and the three subtasks x three prompt templates, exactly as upstream.

The release (AnnaYang2020/DeepEval `data/`) is JSON lines despite the `.json` suffix: `Annotation.json` holds
the human Description / Title / Deep_Semantics per image, and one question file per subtask holds four options,
the gold letter and three prompt templates. Line orders differ between files, so everything joins on `Image_ID`.

Whitespace: 3,000 of the 3,003 description-subtask distractors carry leading/trailing spaces and almost no gold
does, so the upstream strings give the answer away to any model that reads text. Options are stripped by default;
`official_whitespace=True` keeps the upstream bytes (the prompt is then byte-identical to upstream's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.data import iter_jsonl
from ..core.errors import LmlabError
from ..core.paths import shared_data

LETTERS = ("A", "B", "C", "D")

# subtask -> (question file, X of Prompt_1, Y of Prompt_2/3, annotation field of the gold text)
SUBTASKS: dict[str, tuple[str, str, str, str]] = {
    "description": ("Descripion_Questions.json", "description", "description", "Description"),  # upstream typo
    "title": ("Title_Questions.json", "best title", "title", "Title"),
    "deep_semantics": ("DeepSemantics_Questions.json", "deep meaning", "deep meaning", "Deep_Semantics"),
}
ALIASES = {"deepsemantics": "deep_semantics", "deep-semantics": "deep_semantics", "desc": "description"}
TEMPLATE_IDS = (1, 2, 3)


def template(subtask: str, k: int) -> str:
    """Upstream's Prompt_k for a subtask (identical across all rows of the release); `{}` takes options A-D."""
    _, x, y, _ = SUBTASKS[canonical_subtask(subtask)]
    if k == 1:
        return (
            f"Choose the correct answer to the following question. Which following text is the {x} of the image?\n"
            "Options: (A) {} (B) {} (C) {} (D) {}\nAnswer:"
        )
    if k == 2:
        return (
            f"Select the appropriate {y} for the image from the options given. Which of these is the most suitable "
            f"{y} for the image? \nChoices: A) {{}} B) {{}} C) {{}} D) {{}}\nCorrect Answer:"
        )
    if k == 3:
        return (
            f"Identify the most suitable {y} for the image from the given options. Which of the following should be "
            f"chosen as the {y}? \nChoices are: A. {{}}, B. {{}}, C. {{}}, and D. {{}}. \nThe correct answer is:"
        )
    raise LmlabError(f"unknown template {k}", hint="use 1, 2 or 3 (upstream's Prompt_1..Prompt_3)")


def canonical_subtask(name: str) -> str:
    key = ALIASES.get(name.strip().lower().replace(" ", "_"), name.strip().lower().replace(" ", "_"))
    if key not in SUBTASKS:
        raise LmlabError(f"unknown subtask {name!r}", hint=f"use one of {', '.join(SUBTASKS)}")
    return key


@dataclass
class Item:
    """One question: the raw upstream options (bytes as released) and, when joined, the image's annotation."""

    subtask: str
    image_id: str
    url: str
    options: dict[str, str]  # raw upstream strings, whitespace included
    answer: str
    prompts: dict[int, str] = field(default_factory=dict)  # the row's own Prompt_1..3 (as released)
    description: str | None = None  # Annotation.Description (the oracle condition)
    title: str | None = None
    deep_semantics: str | None = None
    source: str = ""  # file:line, for error messages and provenance

    def option_list(self, official_whitespace: bool = False, rotation: int = 0) -> list[str]:
        """Options in presentation order: upstream A..D rolled left by `rotation` (CircularEval)."""
        opts = [self.options[x] if official_whitespace else self.options[x].strip() for x in LETTERS]
        r = rotation % 4
        return opts[r:] + opts[:r]

    def gold(self, rotation: int = 0) -> str:
        """The gold letter after rolling the options left by `rotation`."""
        return LETTERS[(LETTERS.index(self.answer) - rotation) % 4]

    def letter_map(self, rotation: int = 0) -> dict[str, str]:
        """Presented letter -> upstream letter."""
        return {LETTERS[i]: LETTERS[(i + rotation) % 4] for i in range(4)}


def build_prompt(
    item: Item,
    k: int,
    *,
    official_whitespace: bool = False,
    rotation: int = 0,
    description: str | None = None,
) -> str:
    """Upstream's Prompt_k filled with the options (A-D in order, `str.format` as upstream).

    description: inserted as `Description: {text}\\n` before the question (oracle or self-described condition)."""
    tpl = item.prompts.get(k) or template(item.subtask, k)
    text = tpl.format(*item.option_list(official_whitespace, rotation))
    return f"Description: {description.strip()}\n{text}" if description is not None else text


def _resolve_root(root: str | Path | None) -> Path:
    if root is None:
        return shared_data("deepeval")
    p = Path(root)
    if not p.is_dir():
        raise LmlabError(f"{p}: not a folder", hint="pass the DeepEval release's data/ folder (Annotation.json ...)")
    return p


def read_annotations(path: str | Path) -> dict[str, dict[str, str]]:
    """Image_ID -> {Url, Description, Title, Deep_Semantics}."""
    out: dict[str, dict[str, str]] = {}
    for no, row in iter_jsonl(path):
        for f in ("Image_ID", "Description", "Title", "Deep_Semantics"):
            if not isinstance(row.get(f), str):
                raise LmlabError(
                    f"{path}:{no}: missing field {f!r}",
                    hint="each annotation line needs Image_ID, Url, Description, Title and Deep_Semantics",
                )
        out[row["Image_ID"]] = row
    return out


def read_questions(path: str | Path, subtask: str, annotations: dict[str, dict[str, str]] | None = None) -> list[Item]:
    """One subtask's question file (any path) -> Items, joined with the annotations on Image_ID when given."""
    subtask = canonical_subtask(subtask)
    items: list[Item] = []
    seen: set[str] = set()
    for no, row in iter_jsonl(path):
        where = f"{path}:{no}"
        for f in ("Image_ID", "Options", "Answer"):
            if f not in row:
                raise LmlabError(
                    f"{where}: missing field {f!r}",
                    hint="each question line needs Image_ID, Url, Options {A..D}, Answer and Prompt_1..Prompt_3",
                )
        opts = row["Options"]
        if not isinstance(opts, dict) or any(not isinstance(opts.get(x), str) for x in LETTERS):
            raise LmlabError(f"{where}: field 'Options' must map A, B, C and D to strings")
        if row["Answer"] not in LETTERS:
            raise LmlabError(f"{where}: field 'Answer' is {row['Answer']!r}", hint="expected one of A, B, C, D")
        iid = str(row["Image_ID"])
        if iid in seen:
            raise LmlabError(f"{where}: duplicate Image_ID {iid!r}")
        seen.add(iid)
        item = Item(
            subtask=subtask,
            image_id=iid,
            url=str(row.get("Url", "")),
            options={x: opts[x] for x in LETTERS},
            answer=row["Answer"],
            prompts={k: row[f"Prompt_{k}"] for k in TEMPLATE_IDS if isinstance(row.get(f"Prompt_{k}"), str)},
            source=where,
        )
        if annotations is not None:
            ann = annotations.get(iid)
            if ann is None:
                raise LmlabError(f"{where}: Image_ID {iid!r} has no line in the annotation file")
            item.description, item.title, item.deep_semantics = ann["Description"], ann["Title"], ann["Deep_Semantics"]
            item.url = item.url or str(ann.get("Url", ""))
        items.append(item)
    if not items:
        raise LmlabError(f"{path}: no questions", hint="expected one JSON object per line")
    return items


def load_subtask(subtask: str, root: str | Path | None = None, limit: int | None = None) -> list[Item]:
    """A subtask of the release at `root` (default: the shared copy), joined with Annotation.json."""
    subtask = canonical_subtask(subtask)
    base = _resolve_root(root)
    qfile = base / SUBTASKS[subtask][0]
    if not qfile.exists():
        raise LmlabError(f"{qfile}: no such file", hint="the folder must hold upstream's question files")
    ann_path = base / "Annotation.json"
    ann = read_annotations(ann_path) if ann_path.exists() else None
    items = read_questions(qfile, subtask, ann)
    return items[:limit] if limit else items


def subset(items: list[Item], n: int | None, seed: int = 0) -> list[Item]:
    """A seeded random subset of n items, in file order (n=None: all)."""
    if n is None or n >= len(items):
        return items
    import random

    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
