"""The evaluation loop: items x templates x rotations -> resumable prediction records with per-item provenance,
and the summary tables (per template, mean +- std over templates, CircularEval, unparseable counts, disagreement
between scorers, optional per-category breakdown)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.engine import SamplingParams
from ..core.errors import LmlabError
from .backends import Request
from .data import Item, build_prompt
from .images import ImageSource
from .scoring import Extraction, Judge, canonical_extract, circular, disagreement, official_extract, robust_extract
from .store import PredictionStore

CONDITIONS = ("none", "oracle", "self")
DESCRIBE_PROMPT = "Describe the image in detail."
SCORERS = ("official", "canonical", "robust")


@dataclass
class RunConfig:
    templates: Sequence[int] = (1, 2, 3)
    rotations: int = 1  # 4 = CircularEval (every rolling of the options)
    official_whitespace: bool = False
    condition: str = "none"  # none | oracle (human description) | self (model describes the image first)
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    batch_size: int = 8
    judge_retries: int = 2
    label: str = ""  # the `model` key of the records (default: the backend's name + mode + condition)

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise LmlabError(f"unknown condition {self.condition!r}", hint=f"use one of {', '.join(CONDITIONS)}")
        if not 1 <= self.rotations <= 4:
            raise LmlabError("--rotations must be 1..4 (4 = CircularEval)")


def score_output(
    output: str, options: list[str], gold: str, question: str = "", judge: Judge | None = None, judge_retries: int = 2
) -> dict[str, Any]:
    """The three extractors on one output, with their provenance."""
    got: dict[str, Extraction] = {
        "official": official_extract(output, options),
        "canonical": canonical_extract(output, options),
        "robust": robust_extract(output, options, judge=judge, question=question, retries=judge_retries),
    }
    rec: dict[str, Any] = {}
    for name, ex in got.items():
        rec[f"{name}_letter"], rec[f"{name}_method"], rec[f"{name}_correct"] = ex.letter, ex.method, ex.letter == gold
    return rec


def _oracle_description(item: Item) -> str:
    if item.description is None:
        raise LmlabError(
            f"{item.source}: no annotation for {item.image_id}",
            hint="the oracle condition needs Annotation.json beside the question files",
        )
    return item.description


def _check_images(answerer: Any, images: ImageSource | None) -> None:
    if getattr(answerer, "vision", False) and (images is None or not images.available):
        raise LmlabError(
            "this run needs images and has none",
            hint="pass --images DIR (files named <Image_ID>.jpg) or --download to fetch the release URLs",
        )


def self_descriptions(
    items: Sequence[Item], answerer: Any, store: PredictionStore, cfg: RunConfig, label: str, images: ImageSource | None
) -> dict[str, str]:
    """First turn of the self-described condition, stored (and resumed) like any prediction."""
    _check_images(answerer, images)
    out: dict[str, str] = {}
    todo: list[tuple[Item, Request]] = []
    for it in items:
        key = (label, "self_description", 0, it.image_id, 0)
        rec = store.get(key)
        if rec is not None:
            out[it.image_id] = rec["output"]
            continue
        img = images.get(it.image_id, it.url) if images is not None and images.available else None
        if getattr(answerer, "vision", False) and img is None:
            continue
        todo.append((it, Request(DESCRIBE_PROMPT, img)))
    params = SamplingParams(max_new_tokens=max(cfg.max_new_tokens, 96), temperature=cfg.temperature, seed=cfg.seed)
    for i in range(0, len(todo), cfg.batch_size):
        chunk = todo[i : i + cfg.batch_size]
        for (it, _), text in zip(chunk, answerer.answer([r for _, r in chunk], params)):
            store.append(
                {
                    "model": label,
                    "subtask": "self_description",
                    "template": 0,
                    "item": it.image_id,
                    "rotation": 0,
                    "output": text,
                }
            )
            out[it.image_id] = text
    return out


def _description(it: Item, cfg: RunConfig, selfdesc: dict[str, str]) -> str | None:
    if cfg.condition == "oracle":
        return _oracle_description(it)
    if cfg.condition == "self":
        return selfdesc.get(it.image_id, "")
    return None


def _base_record(label: str, it: Item, k: int, rot: int, cfg: RunConfig, mode: str, prompt: str) -> dict[str, Any]:
    return {
        "model": label,
        "subtask": it.subtask,
        "template": k,
        "item": it.image_id,
        "rotation": rot,
        "mode": mode,
        "condition": cfg.condition,
        "official_whitespace": cfg.official_whitespace,
        "gold": it.gold(rot),
        "options": it.option_list(cfg.official_whitespace, rot),
        "prompt": prompt,
    }


def run_generate(
    items: Sequence[Item],
    answerer: Any,
    store: PredictionStore,
    cfg: RunConfig,
    images: ImageSource | None = None,
    judge: Judge | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Generate-then-extract. Returns the number of new predictions (finished keys are skipped)."""
    label = cfg.label or f"{answerer.name}/generate/{cfg.condition}"
    _check_images(answerer, images)
    vision = getattr(answerer, "vision", False)
    selfdesc = self_descriptions(items, answerer, store, cfg, label, images) if cfg.condition == "self" else {}
    todo: list[tuple[dict[str, Any], Request]] = []
    for it in items:
        img = None
        for k in cfg.templates:
            for rot in range(cfg.rotations):
                if (label, it.subtask, k, it.image_id, rot) in store:
                    continue
                if vision and img is None:
                    img = images.get(it.image_id, it.url)
                    if img is None:
                        break
                prompt = build_prompt(
                    it,
                    k,
                    official_whitespace=cfg.official_whitespace,
                    rotation=rot,
                    description=_description(it, cfg, selfdesc),
                )
                todo.append((_base_record(label, it, k, rot, cfg, "generate", prompt), Request(prompt, img)))
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    done = 0
    for i in range(0, len(todo), cfg.batch_size):
        chunk = todo[i : i + cfg.batch_size]
        for (rec, _), text in zip(chunk, answerer.answer([r for _, r in chunk], params)):
            rec["output"] = text
            rec.update(score_output(text, rec["options"], rec["gold"], rec["prompt"], judge, cfg.judge_retries))
            store.append(rec)
            done += 1
        if progress:
            progress(done)
    return done


def run_loglik(
    items: Sequence[Item],
    scorer: Any,
    store: PredictionStore,
    cfg: RunConfig,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Log-likelihood scoring of the four options (`loglik.LoglikScorer`); no parsing."""
    if cfg.condition == "self":
        raise LmlabError("the self-described condition needs generation", hint="use --mode generate")
    label = cfg.label or f"{name}/loglik/{cfg.condition}"
    done = 0
    for it in items:
        for k in cfg.templates:
            for rot in range(cfg.rotations):
                if (label, it.subtask, k, it.image_id, rot) in store:
                    continue
                prompt = build_prompt(
                    it,
                    k,
                    official_whitespace=cfg.official_whitespace,
                    rotation=rot,
                    description=_description(it, cfg, {}),
                )
                rec = _base_record(label, it, k, rot, cfg, "loglik", prompt)
                s = scorer.score(prompt, rec["options"])
                rec.update(ll_sum=s.logprob, ll_tokens=s.tokens, ll_letter=s.letter_logprob)
                for how in ("mean", "sum", "letter"):
                    rec[f"ll_{how}_letter"] = s.pick(how)
                    rec[f"ll_{how}_correct"] = rec[f"ll_{how}_letter"] == rec["gold"]
                store.append(rec)
                done += 1
                if progress:
                    progress(done)
    return done


# ------------------------------------------------------------------------------------------------ summary
def scorers_of(records: Sequence[dict]) -> list[str]:
    names = [s for s in (*SCORERS, "ll_mean", "ll_sum", "ll_letter") if any(f"{s}_correct" in r for r in records)]
    return names


def load_categories(path: str | Path) -> dict[str, str]:
    """Image_ID -> category from a JSON object, JSON lines {Image_ID, category} or a two-column CSV."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such file")
    text = path.read_text()
    if path.suffix == ".csv":
        import csv

        rows = list(csv.reader(text.splitlines()))
        return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return {str(k): str(v) for k, v in obj.items()}
    except json.JSONDecodeError:
        pass
    from ..core.data import iter_jsonl

    out = {}
    for no, row in iter_jsonl(path):
        if "Image_ID" not in row or "category" not in row:
            raise LmlabError(f"{path}:{no}: missing field 'Image_ID' or 'category'")
        out[str(row["Image_ID"])] = str(row["category"])
    return out


def summarize(records: Sequence[dict], categories: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Tables: per (model, subtask, scorer) accuracy per template + mean/std over templates + circular; unparseable
    counts; pairwise disagreement; per-category accuracy when categories are given."""
    recs = [r for r in records if r["subtask"] != "self_description"]
    by: dict[tuple, list[dict]] = defaultdict(list)
    for r in recs:
        by[(r["model"], r["subtask"])].append(r)
    acc_rows, unparse_rows, dis_rows, cat_rows = [], [], [], []
    for (model, subtask), rs in sorted(by.items()):
        for s in scorers_of(rs):
            row: dict[str, Any] = {"model": model, "subtask": subtask, "scorer": s, "n": len(rs)}
            per = []
            for k in sorted({r["template"] for r in rs}):
                kr = [r for r in rs if r["template"] == k and r["rotation"] == 0]
                if kr:
                    a = 100.0 * sum(bool(r[f"{s}_correct"]) for r in kr) / len(kr)
                    row[f"P{k}"] = a
                    per.append(a)
            row["mean"] = statistics.fmean(per) if per else None
            row["std"] = statistics.stdev(per) if len(per) > 1 else 0.0 if per else None
            if any(r["rotation"] > 0 for r in rs):
                hits, complete, _ = circular(rs, s, rotations=max(r["rotation"] for r in rs) + 1)
                row["circular"] = 100.0 * hits / complete if complete else None
            acc_rows.append(row)
            if categories:
                cats: dict[str, list[bool]] = defaultdict(list)
                for r in rs:
                    if r["rotation"] == 0:
                        cats[categories.get(r["item"], "(uncategorised)")].append(bool(r[f"{s}_correct"]))
                for c, v in sorted(cats.items()):
                    cat_rows.append(
                        {
                            "model": model,
                            "subtask": subtask,
                            "scorer": s,
                            "category": c,
                            "n": len(v),
                            "accuracy": 100.0 * sum(v) / len(v),
                        }
                    )
        gen = [r for r in rs if "output" in r]
        if gen:
            unparse_rows.append(
                {
                    "model": model,
                    "subtask": subtask,
                    "n": len(gen),
                    **{f"{s}_unparseable": sum(r[f"{s}_letter"] is None for r in gen) for s in SCORERS},
                    "judge_used": sum(str(r["robust_method"]).startswith("robust/judge") for r in gen),
                }
            )
            for a, b in (("official", "robust"), ("official", "canonical"), ("canonical", "robust")):
                dis_rows.append({"model": model, "subtask": subtask, "pair": f"{a} vs {b}", **disagreement(gen, a, b)})
    return {"accuracy": acc_rows, "unparseable": unparse_rows, "disagreement": dis_rows, "categories": cat_rows}


def rescore(records: Sequence[dict], judge: Judge | None = None, retries: int = 2) -> list[dict]:
    """Re-run the extractors on stored outputs (e.g. after adding a judge); loglik records pass through."""
    out = []
    for r in records:
        r = dict(r)
        if "output" in r and "options" in r and r["subtask"] != "self_description":
            r.update(score_output(r["output"], r["options"], r["gold"], r.get("prompt", ""), judge, retries))
        out.append(r)
    return out


def cross_disagreement(gen: Sequence[dict], ll: Sequence[dict], how: str = "ll_mean") -> dict[str, Any]:
    """Official vs robust vs log-likelihood on the same questions (joined on subtask, template, item, rotation):
    how often each pair picks different letters."""
    key = lambda r: (r["subtask"], r["template"], r["item"], r["rotation"])  # noqa: E731
    lk = {key(r): r for r in ll}
    pairs = [(g, lk[key(g)]) for g in gen if key(g) in lk]
    return {
        "n": len(pairs),
        "official_vs_robust": sum(g["official_letter"] != g["robust_letter"] for g, _ in pairs),
        "official_vs_loglik": sum(g["official_letter"] != l[f"{how}_letter"] for g, l in pairs),
        "robust_vs_loglik": sum(g["robust_letter"] != l[f"{how}_letter"] for g, l in pairs),
        "all_three_agree": sum(g["official_letter"] == g["robust_letter"] == l[f"{how}_letter"] for g, l in pairs),
    }
