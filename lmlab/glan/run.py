"""One `lmlab glan run`: taxonomy -> stages -> dedup/decontamination -> JSONL + stats, all under `out_dir`.

out_dir/calls.sqlite   every LLM call (the resume point; safe to copy between machines)
out_dir/raw.jsonl      all generated rows with provenance
out_dir/glan.jsonl     rows kept after quality filters, dedup and decontamination (`datasets.load_dataset("json", ...)`)
out_dir/removed.jsonl  rows removed, with the filter (`removed`) and why (`removed_detail`)
out_dir/stats.json     per-stage calls/tokens, per-discipline stats, per-filter drop counts, benchmark files checked
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.llmcache import LLMCache
from ..core.paths import atomic_write_text
from .batchapi import export_requests
from .filters import apply_filters, default_filters
from .pipeline import BudgetReached, Caller, GlanConfig, PendingExport, run_pipeline, stage_table, write_jsonl
from .quality import BENCH_FIELDS, Decontaminator, dedup, load_benchmark_texts, stats_rows
from .taxonomy import Discipline

log = logging.getLogger("lmlab.glan")


@dataclass
class RunResult:
    status: str  # "complete" | "budget" | "exported"
    rows: list[dict]
    stats: dict[str, Any]
    message: str = ""


def glan_run(
    out_dir: Path,
    disciplines: list[Discipline],
    backend: Any,
    cfg: GlanConfig,
    *,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    decontaminate: list[Path] | None = None,
    decontam_n: int = 10,
    text_fields: tuple[str, ...] = BENCH_FIELDS,
    filters: list | None = None,
    near_dup_threshold: float = 0.8,
    export_to: Path | None = None,
    retries: int = 2,
) -> RunResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = LLMCache(out_dir / "calls.sqlite")
    caller = Caller(
        backend,
        cache,
        seed=cfg.seed,
        retries=retries,
        max_requests=max_requests,
        max_tokens=max_tokens,
        export=export_to is not None,
    )
    try:
        raw = run_pipeline(disciplines, caller, cfg)
    except BudgetReached as e:
        return RunResult(
            "budget",
            [],
            {"stages": stage_table(caller)},
            f"{e}; everything is cached in {cache.path}, rerun to continue",
        )
    except PendingExport as e:
        export_requests(e.requests, export_to)  # type: ignore[arg-type]
        return RunResult(
            "exported",
            [],
            {"stages": stage_table(caller)},
            f"wrote {len(e.requests)} pending '{e.stage}' requests to {export_to}; run them, then `lmlab glan import-batch`",
        )
    finally:
        cache.close()
    write_jsonl(raw, out_dir / "raw.jsonl")
    # benchmark files first: a bad path or file fails before any filtering work
    benches = [(Path(p), load_benchmark_texts(p, text_fields)) for p in decontaminate or []]
    q = apply_filters(raw, default_filters() if filters is None else filters)
    rep = dedup(q.kept, threshold=near_dup_threshold)
    kept, removed, counts = rep.kept, q.removed + rep.removed, {**q.counts, **rep.counts}
    counts["contaminated"] = 0
    checked = []
    for path, texts in benches:
        d = Decontaminator(texts, n=decontam_n).filter(kept)
        kept, removed = d.kept, removed + [{**r, "removed_detail": str(path)} for r in d.removed]
        counts["contaminated"] += d.counts["contaminated"]
        checked.append({"file": str(path), "texts": len(texts), "removed": d.counts["contaminated"]})
    write_jsonl(kept, out_dir / "glan.jsonl")
    write_jsonl(removed, out_dir / "removed.jsonl")
    stats = {
        "config": asdict(cfg),
        "model": backend.name,
        "generated": len(raw),
        "kept": len(kept),
        "filters": counts,
        "decontaminated_against": checked,
        "decontam_n": decontam_n,
        "stages": stage_table(caller),
        "disciplines": stats_rows(kept, removed),
    }
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, indent=2))
    return RunResult("complete", kept, stats, f"{len(kept)} rows -> {out_dir / 'glan.jsonl'}")
