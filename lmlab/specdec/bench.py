"""Spec-Bench-style benchmark: plain native decoding vs SpS, PLD, EAGLE-style, and transformers' assisted
generation (same draft) and prompt lookup, all greedy, same prompts, same dtype, measured in one run.

Methods run one after another on each prompt (not method after method), so load drifts on a shared
machine hit every method alike. Per-prompt rows are appended to `<json>.rows.jsonl` as they finish, so an
interrupted run resumes; the summary JSON is written atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.engine import SamplingParams, encode_chat, eos_ids, generate
from ..core.errors import LmlabError
from ..core.loader import LoadedModel, load_model
from ..core.paths import atomic_write_text, shared_data
from .decode import SpecStats, spec_generate
from .registry import find_trained, make_drafter

METHODS = ("ar", "sps", "pld", "eagle", "eagle_pld", "selfq4", "layerskip", "hf_ar", "hf_assisted", "hf_prompt_lookup")
"""`hf_ar` is transformers' plain greedy `generate`: the baseline that transformers' own speculative methods are
measured against, so speculation's gain and the engine's gain are reported apart."""


def load_questions(
    path: Path | None, limit_per_category: int | None, categories: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """First turn of each question; the first `limit_per_category` questions of every (chosen) category."""
    path = Path(path) if path else shared_data("spec_bench", "question.jsonl")
    if not path.exists():
        raise LmlabError(
            f"{path}: no such prompts file",
            hint="pass a Spec-Bench style JSON-lines file (question_id, category, turns)",
        )
    out, seen = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q = {"id": row.get("question_id", n), "category": row.get("category", "all"), "text": row["turns"][0]}
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise LmlabError(
                f"{path}:{n}: not a Spec-Bench question row",
                hint='each line needs {"question_id", "category", "turns": ["..."]}',
            ) from None
        if categories and q["category"] not in categories:
            continue
        seen[q["category"]] = seen.get(q["category"], 0) + 1
        if limit_per_category is None or seen[q["category"]] <= limit_per_category:
            out.append(q)
    if not out:
        raise LmlabError(f"{path}: no questions")
    return out


class _HF:
    """transformers' own generate on the same checkpoints and dtype, for the assisted-generation baselines."""

    def __init__(self, lm: LoadedModel, draft_path: Path | None):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.model = AutoModelForCausalLM.from_pretrained(str(lm.path), dtype=lm.model.dtype).eval()
        self.draft = (
            AutoModelForCausalLM.from_pretrained(str(draft_path), dtype=lm.model.dtype).eval() if draft_path else None
        )
        self.stops = set(eos_ids(lm.model, lm.tokenizer))
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else min(self.stops)

    def run(self, ids: list[int], max_new: int, method: str) -> list[int]:
        kw: dict[str, Any] = {
            "hf_ar": {},
            "hf_assisted": {"assistant_model": self.draft},
            "hf_prompt_lookup": {"prompt_lookup_num_tokens": 10},
        }[method]
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(self.stops),
                pad_token_id=self.pad,
                **kw,
            )[0, len(ids) :].tolist()
        for i, t in enumerate(out):
            if t in self.stops:
                return out[:i]
        return out


def _config_key(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def run_bench(
    target: str = "smollm2-135m-instruct",
    prompts: Path | None = None,
    limit_per_category: int | None = 2,
    max_new_tokens: int = 128,
    methods: tuple[str, ...] = METHODS,
    json_path: Path | None = None,
    categories: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
    dtype: str = "float32",
    drafts: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) {"overall": {METHOD: {...}}, "per_category": {...}, ...}.

    fp32 by default: on a CPU with lmlab's kernels (lmlab.core.kernels) a target pass over k tokens gives each
    token bit-for-bit the logits a 1-token step gives it, so greedy speculation is lossless by construction.
    In bf16, torch's kernels sum a lone row and a block of rows in different orders, and the last-bit
    differences flip near-tied greedy choices (measured: see benchmarks/RESULTS.md). `drafts` overrides the cached
    trained drafts by kind ("draft": the draft LM folder, "eagle": the head folder), e.g. another training seed's."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "ar" not in methods:
        raise LmlabError(f"--methods {','.join(methods)}: must include 'ar' and only {', '.join(METHODS)}")
    lm = load_model(target, dtype=dtype)  # every method, transformers' included, runs in this dtype
    qs = load_questions(prompts, limit_per_category, categories)
    skipped: dict[str, str] = {}  # method -> why it did not run here; the others' results are kept
    drafts = drafts or {}
    trained = {k: drafts.get(k) or find_trained(lm, k) for k in ("draft", "eagle")}
    given = {"sps": {"draft": drafts.get("draft")}, "eagle": {"head": drafts.get("eagle")}}
    given["eagle_pld"] = given["eagle"]
    drafters = {}
    for m in ("sps", "pld", "eagle", "eagle_pld", "selfq4", "layerskip"):
        if m in methods:
            kw = {k: str(v) for k, v in given.get(m, {}).items() if v is not None}
            drafters[m] = _try(m, skipped, log, lambda m=m, kw=kw: make_drafter(lm, m, **kw))
    hf_methods = [m for m in methods if m.startswith("hf_")]
    hf = _try(
        "transformers",
        skipped,
        log,
        lambda: _HF(lm, trained["draft"] if "hf_assisted" in methods else None) if hf_methods else None,
    )
    if hf is None:
        skipped.update({m: skipped["transformers"] for m in hf_methods if "transformers" in skipped})
    skipped.pop("transformers", None)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    cfg = {
        "target": str(lm.path),
        "prompts": str(prompts or "spec_bench"),
        "limit": limit_per_category,
        "categories": list(categories),
        "max_new": max_new_tokens,
        "methods": list(methods),
        "threads": torch.get_num_threads(),
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        # which trained drafts ran: rows measured with other drafts must not be resumed into this run
        "drafts": {
            k: getattr(trained[k], "name", None)
            for k, ms in (("draft", ("sps", "hf_assisted")), ("eagle", ("eagle", "eagle_pld")))
            if any(m in methods for m in ms)
        },
    }
    rows_path = Path(json_path).with_suffix(".rows.jsonl") if json_path else None
    rows = _resume(rows_path, _config_key(cfg))
    for i, q in enumerate(qs):
        if any(r["id"] == q["id"] for r in rows):
            continue
        ids = encode_chat(lm.tokenizer, [{"role": "user", "content": q["text"]}])
        row: dict[str, Any] = {"key": _config_key(cfg), "id": q["id"], "category": q["category"], "methods": {}}
        ref = None
        for m in methods:
            if m in skipped:
                continue
            st = SpecStats()
            t0 = time.perf_counter()
            try:
                if m == "ar":
                    toks = generate(lm.model, lm.tokenizer, [ids], params)[0].token_ids
                elif m in drafters:
                    toks = spec_generate(lm.model, lm.tokenizer, drafters[m], [ids], params, stats=st)[0].token_ids
                else:
                    toks = hf.run(ids, max_new_tokens, m)
            except Exception as e:  # one method's failure must not discard the others' results
                if m == "ar":
                    raise
                skipped[m] = _reason(e)
                log(f"{m}: skipped ({skipped[m]})")
                continue
            dt = time.perf_counter() - t0
            ref = toks if m == "ar" else ref
            row["methods"][m] = {
                "tokens": len(toks),
                "seconds": dt,
                "identical": toks == ref,
                "passes": st.passes,
                "accepted": st.accepted,
                "tries": st.tries,
                "depth": st.depth,
                "proposed": st.proposed,
                "draft_s": st.draft_s,
                "verify_s": st.verify_s,
                "rounds": st.rounds,
            }
        rows.append(row)
        if rows_path:
            with open(rows_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        log(
            f"[{i + 1}/{len(qs)}] {q['category']:>14s} "
            + " ".join(
                f"{m}={row['methods'][m]['tokens'] / row['methods'][m]['seconds']:.1f}tok/s" for m in row["methods"]
            )
        )
    ran = tuple(m for m in methods if m not in skipped)
    for r in rows:  # a method that failed part-way is reported as skipped, not from its first prompts alone
        r["methods"] = {m: v for m, v in r["methods"].items() if m in ran}
    result = summarise(rows, ran)
    result["rows"] = rows  # per prompt: the report's intervals resample them
    result["config"] = cfg
    result["skipped"] = skipped
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result, indent=2))
    return result


def _reason(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ""
    return msg if isinstance(e, LmlabError) else f"{type(e).__name__}: {msg}"


def _try(name: str, skipped: dict[str, str], log: Callable[[str], None], make: Callable[[], Any]) -> Any:
    """`make()`, or None with `skipped[name]` set to the one-line reason it cannot run here."""
    try:
        return make()
    except Exception as e:  # e.g. a method this CPU cannot run: list it as skipped, run the rest
        skipped[name] = _reason(e)
        log(f"{name}: skipped ({skipped[name]})")
        return None


def _resume(path: Path | None, key: str) -> list[dict]:
    if not path or not path.exists():
        return []
    return [
        r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip()) if r.get("key") == key
    ]


def _aggregate(rows: list[dict], methods: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    tot = {
        m: {k: sum(r["methods"][m][k] for r in rows) for k in rows[0]["methods"][m] if k != "identical"}
        for m in methods
    }
    ar_tok_s = tot["ar"]["seconds"] / max(1, tot["ar"]["tokens"])  # one target decoding step
    out = {}
    for m in methods:
        t = tot[m]
        rate = t["tokens"] / t["seconds"]
        d: dict[str, Any] = {
            "speedup": rate / (tot["ar"]["tokens"] / tot["ar"]["seconds"]),
            "tokens_per_s": rate,
            "lossless": all(r["methods"][m]["identical"] for r in rows),
            "tokens": t["tokens"],
            "seconds": t["seconds"],
        }
        if t["passes"]:
            alpha = t["accepted"] / max(1, t["tries"])
            gamma = t["depth"] / t["passes"]
            c = t["draft_s"] / max(1, t["depth"]) / ar_tok_s  # cost of one draft step / one target step
            pred = (
                (1 - alpha ** (gamma + 1)) / (1 - alpha) / (gamma * c + 1)
                if alpha < 1
                else (gamma + 1) / (gamma * c + 1)
            )
            d.update(
                {
                    "mean_accepted_tokens": (t["accepted"] + t["passes"]) / t["passes"],
                    "acceptance_rate": alpha,
                    "mean_gamma": gamma,
                    "mean_draft_nodes": t["proposed"] / t["passes"],
                    "c": c,
                    "predicted_speedup": pred,
                    "achieved_fraction": d["speedup"] / pred,
                    "verify_cost": t["verify_s"]
                    / t["rounds"]
                    / ar_tok_s,  # one verification pass, in target decoding steps
                    "time_draft": t["draft_s"] / t["seconds"],
                    "time_verify": t["verify_s"] / t["seconds"],
                }
            )
        out[m] = d
    return out


def summarise(rows: list[dict], methods: tuple[str, ...]) -> dict[str, Any]:
    cats: dict[str, list[dict]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    return {
        "overall": _aggregate(rows, methods),
        "per_category": {c: _aggregate(rs, methods) for c, rs in cats.items()},
        "n_prompts": len(rows),
    }


COLUMNS = [
    "method",
    "speedup",
    "tokens_per_s",
    "mean_accepted_tokens",
    "acceptance_rate",
    "mean_gamma",
    "c",
    "predicted_speedup",
    "achieved_fraction",
    "verify_cost",
    "time_draft",
    "time_verify",
    "lossless",
]


def table(result: dict[str, Any]) -> str:
    from ..core.report import markdown_table

    overall = [{"method": m, **v} for m, v in result["overall"].items()]
    per_cat = [{"category": c, **{m: v[m]["speedup"] for m in v}} for c, v in result["per_category"].items()]
    skipped = "".join(f"- `{m}` skipped: {why}\n" for m, why in result.get("skipped", {}).items())
    return (
        "**Overall**\n\n"
        + markdown_table(overall, COLUMNS, ".2f")
        + "\n**Speedup over plain decoding per category**\n\n"
        + markdown_table(per_cat, ["category", *result["overall"]], ".2f")
        + (f"\n**Not run on this machine**\n\n{skipped}" if skipped else "")
    )


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = list(result["per_category"])
    methods = [m for m in result["overall"] if m != "ar"]
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / len(methods)
    x = np.arange(len(cats) + 1)
    for j, m in enumerate(methods):
        vals = [result["per_category"][c][m]["speedup"] for c in cats] + [result["overall"][m]["speedup"]]
        ax.bar(x + j * w, vals, w, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x + 0.4 - w / 2, cats + ["overall"], rotation=30, ha="right")
    ax.set_ylabel("speedup over plain native decoding")
    ax.legend(ncol=len(methods), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
