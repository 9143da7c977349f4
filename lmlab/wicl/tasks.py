"""Classification tasks for weighted in-context learning: official templates and label words, loaders for the eight
tasks of the paper (arXiv:2310.08309, Sec. 4.1), any user JSONL/CSV file, and seeded demonstration sampling.

Templates and label words follow the official code (Zhe-Young/WICL `dataset/*.py`, template index 0). A demonstration
is `input + answer[label] + " \\n "`, exactly as the official `get_demo_from_indices` builds it.
"""

from __future__ import annotations

import csv
import json
import math
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmlab.core.errors import LmlabError
from lmlab.core.paths import shared_data

DEMO_SEP = " \n "  # appended to every demonstration by the official code
SPLIT_SEED = 0  # seed of the train/test split of the unsplit sets (MR, CR, SUBJ); recorded in Task.meta


@dataclass(frozen=True)
class Template:
    """`input` has {field} placeholders filled from an example; `answer` has one {answer} placeholder filled with a
    label word. The query is the filled input; the label words' continuations are the filled answers."""

    input: str
    answer: str
    labels: tuple[str, ...]

    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.input) if f is not None]

    def check(self, where: str = "template") -> None:
        try:
            names = self.fields()
            ans = [f for _, f, _, _ in string.Formatter().parse(self.answer) if f is not None]
        except ValueError as e:
            raise LmlabError(
                f"{where}: bad template ({e})", hint="placeholders look like {text}; write {{ for a brace"
            ) from None
        if not names:
            raise LmlabError(
                f"{where}: input template {self.input!r} has no {{field}} placeholder",
                hint="e.g. 'Input: {text} Label:'",
            )
        bad = [f for f in names if not f.isidentifier()]
        if bad:
            raise LmlabError(f"{where}: placeholder {{{bad[0]}}} is not a field name", hint="use names such as {text}")
        if ans != ["answer"]:
            raise LmlabError(
                f"{where}: answer template {self.answer!r} must contain {{answer}} once", hint="e.g. ' {answer}'"
            )
        if len(self.labels) < 2:
            raise LmlabError(f"{where}: need at least two label words, got {list(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise LmlabError(f"{where}: label words repeat: {list(self.labels)}")

    def query(self, ex: Example) -> str:
        return self.input.format(**ex.fields)

    def answers(self) -> list[str]:
        return [self.answer.replace("{answer}", w) for w in self.labels]

    def demo(self, ex: Example) -> str:
        return self.query(ex) + self.answers()[ex.label] + DEMO_SEP


@dataclass(frozen=True)
class Example:
    fields: dict[str, str]
    label: int


@dataclass
class Task:
    name: str
    template: Template
    train: list[Example]
    test: list[Example]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.template.labels)


def _t(inp: str, labels: list[str], answer: str = " {answer}") -> Template:
    return Template(inp, answer, tuple(labels))


# Official templates (template index 0) and label words in label order [CODE Zhe-Young/WICL dataset/*.py].
TEMPLATES: dict[str, Template] = {
    "sst2": _t("Sentence: {text} Sentiment: ", ["negative", "positive"]),
    "mr": _t("Review: {text} Sentiment:", ["Negative", "Positive"]),
    "subj": _t("Input: {text} Type:", ["objective", "subjective"]),
    "agnews": _t("Article: {text} Category:", ["World", "Sports", "Business", "Technology"]),
    "trec": _t("Question: {text} Type:", ["Description", "Entity", "Expression", "Person", "Number", "Location"]),
    "dbpedia": _t(
        "Input: {text} Type:",
        [
            "company",
            "school",
            "artist",
            "sport",
            "politics",
            "transportation",
            "building",
            "nature",
            "village",
            "animal",
            "plant",
            "album",
            "film",
            "book",
        ],
    ),
    "rte": _t("{sentence1} Question: {sentence2} True or False? Answer:", ["True", "False"]),
    "cr": _t("Sentence: {text} Sentiment: ", ["negative", "positive"]),
}
TASKS = tuple(TEMPLATES)

# TREC coarse classes in the label order of the HF `trec` script the official code used (DESC, ENTY, ABBR, HUM,
# NUM, LOC), which is what makes "Expression" the word for ABBR(eviation expansion).
_TREC = {"DESC": 0, "ENTY": 1, "ABBR": 2, "HUM": 3, "NUM": 4, "LOC": 5}
_AGNEWS_POOL = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}
# DBpedia files number classes in meta.txt order (1-based); the official label order is dbpedia_14's.
_DBPEDIA_META = [
    "Artist",
    "Company",
    "OfficeHolder",
    "Building",
    "Village",
    "Plant",
    "EducationalInstitution",
    "Animal",
    "Album",
    "WrittenWork",
    "NaturalPlace",
    "MeanOfTransportation",
    "Athlete",
    "Film",
]
_DBPEDIA_OFFICIAL = [
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
]
# Held-out fraction of the unsplit sets, matching the HF splits the official code used (rotten_tomatoes 10% test,
# SetFit/SentEval-CR and SetFit/subj 20% test).
_TEST_FRACTION = {"mr": 0.1, "cr": 0.2, "subj": 0.2}


def _label_text_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    rows = []
    with open(path, encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            lab, _, text = line.partition(" ")
            if lab not in ("0", "1"):
                raise LmlabError(f"{path}:{n}: expected '<0|1> <text>', got {line[:40]!r}")
            rows.append((int(lab), text.strip()))
    return rows


def _split(rows: list[Example], frac: float, seed: int) -> tuple[list[Example], list[Example]]:
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_test = round(len(rows) * frac)
    return [rows[i] for i in idx[n_test:]], [rows[i] for i in idx[:n_test]]


def load_task(name: str, data_dir: str | Path | None = None, split_seed: int = SPLIT_SEED) -> Task:
    """One of the eight paper tasks from `../shared/data/wicl/<name>` (or `data_dir/<name>`)."""
    if name not in TEMPLATES:
        raise LmlabError(f"unknown task {name!r}", hint=f"use one of {', '.join(TASKS)} or --data FILE")
    root = Path(data_dir) / name if data_dir else shared_data("wicl", name)
    if not root.is_dir():
        raise LmlabError(f"task data not found: {root}", hint="pass --data-dir pointing at a folder with wicl/<task>/")
    meta: dict[str, Any] = {"source": str(root)}
    ex = lambda text, label: Example({"text": text}, label)  # noqa: E731
    if name == "sst2":  # glue/sst2 train / validation == stsa.binary train / dev (872)
        train = [ex(t, y) for y, t in _label_text_lines(root / "stsa.binary.train", "utf-8")]
        test = [ex(t, y) for y, t in _label_text_lines(root / "stsa.binary.dev", "utf-8")]
    elif name in _TEST_FRACTION:
        fname, enc = {
            "mr": ("rt-polarity.all", "latin-1"),
            "cr": ("custrev.all", "utf-8"),
            "subj": ("subj.all", "latin-1"),
        }[name]
        rows = _label_text_lines(root / fname, enc)
        if name == "subj":  # in subj.all 0 = subjective; the official label order is (objective, subjective)
            rows = [(1 - y, t) for y, t in rows]
        train, test = _split([ex(t, y) for y, t in rows], _TEST_FRACTION[name], split_seed)
        meta.update(split_seed=split_seed, test_fraction=_TEST_FRACTION[name])
    elif name == "trec":

        def read(p: Path) -> list[Example]:
            out = []
            for n, line in enumerate(p.read_text(encoding="latin-1").splitlines(), 1):
                if line.strip():
                    lab, _, q = line.partition(" ")
                    coarse = lab.split(":")[0]
                    if coarse not in _TREC:
                        raise LmlabError(f"{p}:{n}: unknown TREC class {lab!r}")
                    out.append(ex(q.strip(), _TREC[coarse]))
            return out

        train, test = read(root / "train.txt"), read(root / "test.txt")
    elif name == "rte":

        def read_rte(p: Path) -> list[Example]:
            out = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    r = json.loads(line)
                    lab = {"entailment": 0, "not_entailment": 1}.get(r["label"])
                    if lab is None:
                        raise LmlabError(f"{p}:{n}: unknown RTE label {r['label']!r}")
                    out.append(Example({"sentence1": r["premise"], "sentence2": r["hypothesis"]}, lab))
            return out

        train, test = read_rte(root / "train.jsonl"), read_rte(root / "val.jsonl")
    elif name == "agnews":  # the train pool holds descriptions only, so the test items use their description too
        with open(root / "train_pool_alps_dev.tsv", encoding="utf-8") as f:
            train = [
                ex(t, _AGNEWS_POOL[y]) for t, y in (line.rstrip("\n").rsplit("\t", 1) for line in f if line.strip())
            ]
        with open(root / "test.csv", encoding="utf-8", newline="") as f:
            test = [ex(r["Description"], int(r["Class Index"]) - 1) for r in csv.DictReader(f)]
        meta["text"] = "description only (the train pool has no titles)"
    else:  # dbpedia: 5k val as the demonstration pool, 5k test
        remap = [_DBPEDIA_OFFICIAL.index(c) for c in _DBPEDIA_META]

        def read_db(p: Path) -> list[Example]:
            with open(p, encoding="utf-8", newline="") as f:
                return [ex(t, remap[int(y) - 1]) for y, t in csv.reader(f)]

        train, test = read_db(root / "val.csv"), read_db(root / "test.csv")
        meta["pool"] = "val.csv"
    return Task(name, TEMPLATES[name], train, test, meta)


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise LmlabError(f"data file not found: {path}")
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            return [(n + 2, dict(r)) for n, r in enumerate(reader)]
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise LmlabError(f"{path}:{n}: not JSON ({e.msg})", hint="one JSON object per line") from None
    return rows


def load_user_task(
    path: str | Path,
    template: str = "Input: {text} Label:",
    labels: list[str] | None = None,
    label_field: str = "label",
    answer: str = " {answer}",
    label_words: list[str] | None = None,
    test_path: str | Path | None = None,
    test_fraction: float = 0.2,
    split_seed: int = SPLIT_SEED,
) -> Task:
    """A user's JSON lines or CSV/TSV file with the template's fields and a label column.

    labels: the label values in label order (default: sorted distinct values of the column); label_words: the
    words the model scores for them (default: the label values themselves). Without `test_path`, a seeded
    `test_fraction` of the rows is held out (the seed is recorded in Task.meta)."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise LmlabError(f"{path}: no rows")
    values = labels or sorted({str(r.get(label_field)) for _, r in rows if r.get(label_field) is not None})
    words = label_words or values
    if len(words) != len(values):
        raise LmlabError(f"{len(words)} label words for {len(values)} labels", hint="give one word per label")
    tpl = Template(template, answer, tuple(words))
    tpl.check(f"{path}: template")
    need = tpl.fields()

    def convert(p: Path, rs: list[tuple[int, dict[str, Any]]]) -> list[Example]:
        out = []
        for n, r in rs:
            for f in [*need, label_field]:
                if f not in r or r[f] is None:
                    raise LmlabError(
                        f"{p}:{n}: missing field {f!r}", hint=f"the template needs {need} and {label_field!r}"
                    )
            lab = str(r[label_field])
            if lab not in values:
                raise LmlabError(f"{p}:{n}: unknown label {lab!r}", hint=f"labels are {values}")
            out.append(Example({f: str(r[f]) for f in need}, values.index(lab)))
        return out

    exs = convert(path, rows)
    meta: dict[str, Any] = {"source": str(path), "labels": values}
    if test_path is not None:
        train, test = exs, convert(Path(test_path), _read_rows(Path(test_path)))
    else:
        train, test = _split(exs, test_fraction, split_seed)
        meta.update(split_seed=split_seed, test_fraction=test_fraction)
    return Task(path.stem, tpl, train, test, meta)


# ----------------------------------------------------------------------------------------------- sampling
def sample_demos(
    pool: list[Example], k: int, seed: int, balanced: bool = False, exclude: set[int] = frozenset()
) -> list[int]:
    """Indices of k demonstrations, in prompt order. The official procedure: shuffle the pool with the seed; with
    `balanced`, take at most ceil(k / C) per class in shuffled order until k are collected."""
    idx = [i for i in range(len(pool)) if i not in exclude]
    if k > len(idx):
        raise LmlabError(f"{k} demonstrations requested from a pool of {len(idx)}")
    rng = random.Random(seed)
    rng.shuffle(idx)
    if not balanced:
        return idx[:k]
    cap = math.ceil(k / (max(e.label for e in pool) + 1))
    count: dict[int, int] = {}
    out = []
    for i in idx:
        y = pool[i].label
        if count.get(y, 0) < cap:
            count[y] = count.get(y, 0) + 1
            out.append(i)
            if len(out) == k:
                break
    return out


def sample_eval(items: list[Example], n: int | None, seed: int = 1) -> list[Example]:
    """At most n evaluation items, sampled with a fixed seed (the official code: 2,000 with random.seed(1))."""
    if n is None or n >= len(items):
        return list(items)
    return random.Random(seed).sample(items, n)


def validation_pool(pool: list[Example], n: int, seed: int = 0) -> list[int]:
    """n class-balanced held-out items for the validation indicator (official: balanced, seed 0)."""
    return sample_demos(pool, n, seed, balanced=True)
