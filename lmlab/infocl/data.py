"""Declarative class-incremental benchmarks: data set, classes per task, split sizes, task-order seeds.

A `BenchmarkSpec` names everything that decides the numbers (which file, which classes in which label list, how
many tasks, train/test sizes per class, the seed of every task order), so two runs of the same spec are the same
experiment. `build(spec, order)` returns a `Benchmark`: per-class train/test examples and the task order.

Task orders follow InfoCL's `DefaultHyperTrain.py` exactly: round r uses seed `2021 + 100 r`;
`random.seed(seed)`, `random.shuffle(list(range(n)))`, then `np.argsort` of the shuffled list (it is the inverse
permutation that is cut into tasks), or, when n < tasks x classes, the list padded with -1 and used directly.
Per-class data shuffles use `random.seed(seed)` again, as InfoCL's readers do.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import LmlabError
from ..core.paths import shared_data

ENTITY_MARKERS = ("[E11]", "[E12]", "[E21]", "[E22]")  # InfoCL's FewRel markers: subject start/end, object start/end


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    group: str = ""  # CLINC150 domain / HWU64 scenario: classes of one group are "analogous"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that defines one class-incremental benchmark (hashable: it keys the feature cache)."""

    name: str
    source: str  # hwu64 | clinc150 | fewrel | file
    num_tasks: int
    classes_per_task: int
    train_per_class: int | None = None  # None: all that remain after the test split
    test_per_class: int | None = None  # None: the source's own split (clinc150) or a fraction (test_fraction)
    test_fraction: float = 0.1  # HWU64 (InfoCL): test = total // 10
    cap_per_class: int | None = None  # HWU64 (InfoCL): at most 194 utterances per intent
    val_per_class: int = 0  # FewRel (InfoCL): 140 validation items, held out and unused
    label_list: str | None = None  # file under shared data infocl/ (InfoCL's id2label order); None: sorted labels
    order_seeds: tuple[int, ...] = (2021, 2121, 2221, 2321, 2421)
    path: str = ""  # the data file(s); empty: the shared copy
    task_type: str = "sentence"  # sentence | relation

    @property
    def num_classes(self) -> int:
        return self.num_tasks * self.classes_per_task


BENCHMARKS: dict[str, BenchmarkSpec] = {
    # InfoCL configs/task_args/HWU64.yaml + data/HWU64.py: 50 intents, 10 x 5, cap 194, 10 % test.
    "hwu64": BenchmarkSpec(
        "hwu64", "hwu64", 10, 5, cap_per_class=194, test_fraction=0.1, label_list="HWU64_id2label.json"
    ),
    # CLINC150 (no InfoCL reader): the data set's own 100 train / 30 test per intent, InfoCL's label list.
    "clinc150": BenchmarkSpec("clinc150", "clinc150", 10, 15, label_list="CLINC150_id2label.json"),
    # FewRel, InfoCL's data/FewRel.py split 420/140/140; offline only the 16 validation relations exist.
    "fewrel16": BenchmarkSpec(
        "fewrel16",
        "fewrel",
        4,
        4,
        train_per_class=420,
        val_per_class=140,
        test_per_class=140,
        label_list="FewRel_id2label.json",
        task_type="relation",
    ),
    "fewrel": BenchmarkSpec(
        "fewrel",
        "fewrel",
        10,
        8,
        train_per_class=420,
        val_per_class=140,
        test_per_class=140,
        label_list="FewRel_id2label.json",
        task_type="relation",
    ),
}


@dataclass
class Benchmark:
    spec: BenchmarkSpec
    labels: list[str]  # label id -> name (the label list's order)
    train: dict[int, list[Example]]
    test: dict[int, list[Example]]
    tasks: list[list[int]]  # task -> label ids
    seed: int
    groups: dict[int, str] = field(default_factory=dict)  # label id -> group


def get_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise LmlabError(f"--benchmark {name!r}: unknown benchmark", hint=f"choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def file_spec(path: str | Path, num_tasks: int, classes_per_task: int, test_fraction: float = 0.2) -> BenchmarkSpec:
    """A user file of (text, label) rows: .jsonl ({"text", "label"[, "group"]}), .csv or .tsv (header text,label)."""
    return BenchmarkSpec(
        f"file:{Path(path).name}", "file", num_tasks, classes_per_task, test_fraction=test_fraction, path=str(path)
    )


def infocl_task_order(n_labels: int, num_tasks: int, classes_per_task: int, seed: int) -> list[list[int]]:
    """InfoCL's task sequence (train/DefaultHyperTrain.py), line for line; label ids index the label list."""
    rng = random.Random(seed)  # = random.seed(seed) after transformers.set_seed(seed); nothing draws in between
    seq: list[int] = list(range(n_labels))
    total = num_tasks * classes_per_task
    if n_labels != total:
        seq.extend([-1] * (total - n_labels))
        rng.shuffle(seq)
        arr = np.array(seq)
    else:
        rng.shuffle(seq)
        arr = np.argsort(seq)
    return [[int(x) for x in row if x != -1] for row in arr.reshape(num_tasks, classes_per_task).tolist()]


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LmlabError(f"{path}: file not found", hint="pass an existing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path}: not valid JSON ({e})", hint="check the file's format") from None


def _read_user_file(path: Path) -> list[Example]:
    """Rows of (text, label[, group]); every bad row names its line."""
    if not path.exists():
        raise LmlabError(
            f"--data {path}: file not found", hint="pass a .jsonl, .csv or .tsv file of (text, label) rows"
        )
    rows: list[Example] = []
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmlabError(f"{path}:{i}: not valid JSON ({e.msg})", hint="one JSON object per line") from None
            if not isinstance(r, dict) or not isinstance(r.get("text"), str) or r.get("label") in (None, ""):
                raise LmlabError(
                    f"{path}:{i}: needs a string field 'text' and a field 'label'",
                    hint='rows look like {"text": "...", "label": "..."}',
                )
            rows.append(Example(r["text"], str(r["label"]), str(r.get("group", ""))))
    elif suffix in (".csv", ".tsv"):
        with path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise LmlabError(f"{path}:1: header must name columns 'text' and 'label'", hint="e.g. text,label")
            for i, r in enumerate(reader, 2):
                if not r.get("text") or not r.get("label"):
                    raise LmlabError(f"{path}:{i}: empty 'text' or 'label'", hint="every row needs both")
                rows.append(Example(r["text"], r["label"], r.get("group") or ""))
    else:
        raise LmlabError(f"--data {path}: unsupported file type {suffix!r}", hint="use .jsonl, .csv or .tsv")
    if not rows:
        raise LmlabError(f"--data {path}: no rows", hint="the file is empty")
    return rows


def _clinc_domains() -> dict[str, str]:
    domains = json.loads((Path(__file__).parent / "clinc150_domains.json").read_text())["domains"]
    return {intent: dom for dom, intents in domains.items() for intent in intents}


def _mark_relation(item: dict) -> str:
    """FewRel tokens with InfoCL's entity markers around the head ([E11] .. [E12]) and tail ([E21] .. [E22])."""
    tokens = list(item["tokens"])
    h, t = item["h"][2][0], item["t"][2][0]
    marks = {h[0]: [ENTITY_MARKERS[0]], t[0]: [ENTITY_MARKERS[2]]}
    ends = {h[-1]: [ENTITY_MARKERS[1]], t[-1]: [ENTITY_MARKERS[3]]}
    out: list[str] = []
    for i, tok in enumerate(tokens):
        out += marks.get(i, [])
        out.append(tok)
        out += ends.get(i, [])
    return " ".join(out)


def _raw_rows(spec: BenchmarkSpec) -> dict[str, list[Example]] | tuple[dict[str, list[Example]], dict[str, list]]:
    by_label: dict[str, list[Example]] = {}
    if spec.source == "hwu64":
        path = Path(spec.path) if spec.path else shared_data("hwu64", "hwu64_cv.jsonl")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            try:
                r = json.loads(line)
                by_label.setdefault(r["label"], []).append(Example(r["text"], r["label"], r["scenario"]))
            except (json.JSONDecodeError, KeyError) as e:
                raise LmlabError(f"{path}:{i}: bad HWU64 row ({e})", hint="rows need label, scenario, text") from None
    elif spec.source == "fewrel":
        files = (
            [Path(p) for p in spec.path.split(",")]
            if spec.path
            else [shared_data("fewrel", "val_wiki.json"), *_fewrel_train()]
        )
        for path in files:
            data = _load_json(path)
            if not isinstance(data, dict):
                raise LmlabError(f"{path}: expected {{relation: [items]}}", hint="FewRel's train_wiki/val_wiki format")
            for rel, items in data.items():
                try:
                    by_label.setdefault(rel, []).extend(Example(_mark_relation(it), rel) for it in items)
                except (KeyError, IndexError, TypeError) as e:
                    raise LmlabError(
                        f"{path}: relation {rel}: bad item ({e})", hint="items need tokens, h and t"
                    ) from None
    elif spec.source == "file":
        for ex in _read_user_file(Path(spec.path)):
            by_label.setdefault(ex.label, []).append(ex)
    elif spec.source != "clinc150":
        raise LmlabError(f"benchmark source {spec.source!r} unknown", hint="hwu64, clinc150, fewrel or file")
    return by_label


def _fewrel_train() -> list[Path]:
    try:
        return [shared_data("fewrel", "train_wiki.json")]
    except LmlabError:
        return []


def _label_list(spec: BenchmarkSpec, present: list[str]) -> list[str]:
    if spec.label_list is None:
        return sorted(present)
    ids = _load_json(shared_data("infocl", spec.label_list))
    assert isinstance(ids, list)
    return [label for label in ids if label in set(present)]


def build(spec: BenchmarkSpec, order: int = 0) -> Benchmark:
    """Splits and task order of round `order` (seed `spec.order_seeds[order]`)."""
    if not 0 <= order < len(spec.order_seeds):
        raise LmlabError(f"task order {order} out of range", hint=f"0..{len(spec.order_seeds) - 1} for {spec.name}")
    seed = spec.order_seeds[order]
    if spec.source == "clinc150":
        path = Path(spec.path) if spec.path else shared_data("clinc150", "data_full.json")
        raw = _load_json(path)
        if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
            raise LmlabError(f"{path}: expected CLINC150's {{split: [[text, intent], ...]}}", hint="data_full.json")
        dom = _clinc_domains()
        tr: dict[str, list[Example]] = {}
        te: dict[str, list[Example]] = {}
        for split, dst in (("train", tr), ("test", te)):
            for text, intent in raw[split]:
                dst.setdefault(intent, []).append(Example(text, intent, dom.get(intent, "")))
        labels = _label_list(spec, list(tr))
        _check_count(spec, labels)
        train = {i: tr[name] for i, name in enumerate(labels)}
        test = {i: te[name] for i, name in enumerate(labels)}
    else:
        by_label = _raw_rows(spec)
        labels = _label_list(spec, list(by_label))
        if spec.source == "file":  # user files: the classes with most rows first, ties by name; then cut
            labels = sorted(labels, key=lambda lab: (-len(by_label[lab]), lab))[: spec.num_classes]
        _check_count(spec, labels)
        labels = labels[: spec.num_classes]
        rng = random.Random(seed)  # InfoCL's readers: random.seed(seed), then one shuffle per class in id order
        train, test = {}, {}
        for i, name in enumerate(labels):
            rows = list(by_label[name])
            rng.shuffle(rows)
            total = len(rows) if spec.cap_per_class is None else min(len(rows), spec.cap_per_class)
            if spec.test_per_class is not None:  # FewRel: train first, then val, then test
                n_tr, n_val = spec.train_per_class or 0, spec.val_per_class
                need = n_tr + n_val + spec.test_per_class
                if total < need:
                    raise LmlabError(
                        f"{spec.name}: class {name!r} has {total} rows, the split needs {need}",
                        hint="lower --train-per-class/--test-per-class",
                    )
                train[i] = rows[:n_tr]
                test[i] = rows[n_tr + n_val : need]
            else:
                # HWU64 (InfoCL): test_cnt = total_cnt // 10; user files: a fraction, at least one
                n_test = total // 10 if spec.source == "hwu64" else max(1, int(total * spec.test_fraction))
                test[i] = rows[:n_test]
                train[i] = rows[n_test:total]
                if spec.train_per_class is not None:
                    train[i] = train[i][: spec.train_per_class]
                if len(train[i]) < 2:
                    raise LmlabError(
                        f"{spec.name}: class {name!r} has {len(rows)} rows, too few to split",
                        hint="each class needs at least 3 rows",
                    )
    tasks = infocl_task_order(len(labels), spec.num_tasks, spec.classes_per_task, seed)
    groups = {i: (train[i][0].group if train[i] else "") for i in range(len(labels))}
    return Benchmark(spec, labels, train, test, tasks, seed, groups)


def _check_count(spec: BenchmarkSpec, labels: list[str]) -> None:
    if len(labels) < spec.num_classes:
        raise LmlabError(
            f"{spec.name}: {len(labels)} classes, too few for {spec.num_tasks} tasks x {spec.classes_per_task} classes",
            hint=f"lower --tasks or --classes-per-task (at most {len(labels)} classes in all)",
        )
