"""One `lmlab glan run`: taxonomy -> stages -> dedup/decontamination -> JSONL + stats, all under `out_dir`.

out_dir/calls.sqlite   every LLM call (the resume point; safe to copy between machines)
out_dir/raw.jsonl      all generated rows with provenance
out_dir/glan.jsonl     rows kept after dedup and decontamination (`datasets.load_dataset("json", ...)`)
out_dir/removed.jsonl  rows removed, with the reason
out_dir/stats.json     per-stage calls/tokens, per-discipline stats, filter counts
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
from .pipeline import BudgetReached, Caller, GlanConfig, PendingExport, run_pipeline, stage_table, write_jsonl
from .quality import Decontaminator, dedup, load_benchmark_texts, stats_rows
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
    rep = dedup(raw, threshold=near_dup_threshold)
    kept, removed, counts = rep.kept, rep.removed, dict(rep.counts)
    counts["contaminated"] = 0
    for path in decontaminate or []:
        d = Decontaminator(load_benchmark_texts(path), n=decontam_n).filter(kept)
        kept, removed = d.kept, removed + d.removed
        counts["contaminated"] += d.counts["contaminated"]
    write_jsonl(kept, out_dir / "glan.jsonl")
    write_jsonl(removed, out_dir / "removed.jsonl")
    stats = {
        "config": asdict(cfg),
        "model": backend.name,
        "generated": len(raw),
        "kept": len(kept),
        "filters": counts,
        "decontaminated_against": [str(p) for p in decontaminate or []],
        "stages": stage_table(caller),
        "disciplines": stats_rows(kept, removed),
    }
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, indent=2))
    return RunResult("complete", kept, stats, f"{len(kept)} rows -> {out_dir / 'glan.jsonl'}")
