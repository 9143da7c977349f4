"""`lmlab amr bench`: parsing throughput (batched beam search) and Smatch time per metric, as JSON + a table.

Speed is reported as ratios against a baseline measured in the same run (batch 1, greedy; snowblink Smatch),
never asserted in tests. The parser is the quick reproduction's default-order one (cached) unless given.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from lmlab.core.paths import atomic_write_text, shared_data
from lmlab.core.report import markdown_table

from .graphs import AmrGraph, one_line, read_amr
from .linearize import delinearize


def _default_parser():
    from dataclasses import replace

    from .linearize import linearize
    from .parser import train_plain
    from .reproduce import _cached, make_tokenizer, quick_config, settings_key

    cfg = quick_config()
    train = read_amr(shared_data("amr_little_prince", "lpp-v3.0-train.txt"))
    tok, tok_key = make_tokenizer(cfg, train)
    if cfg.max_target_tokens:
        train = [g for g in train if len(tok.target(linearize(g.tree))) <= cfg.max_target_tokens]
    st = replace(cfg.plain, seed=0, history=[])
    key = settings_key(st, f"{len(train)}-{tok_key}")
    return _cached(f"nlr-{key}", lambda: train_plain(train, "nlr", st, tok=tok))


def run_bench(json_path: Path, n: int = 32, model: Path | None = None, echo=print) -> dict:
    from .metrics import smatch_ilp, smatch_snowblink
    from .parser import Parser

    parser = Parser.load(model) if model else _default_parser()
    test = read_amr(shared_data("amr_little_prince", "lpp-v3.0-test.txt"))[:n]
    sents = [g.sentence for g in test]
    rows = []
    preds: list[AmrGraph] = []
    for beam, bs in ((1, 1), (1, 32), (5, 1), (5, 32)):
        t0 = time.perf_counter()
        toks = parser.parse_tokens(sents, beam=beam, batch_size=bs)
        secs = time.perf_counter() - t0
        rows.append(
            {
                "what": f"parse beam {beam}, batch {bs}",
                "n": len(sents),
                "seconds": secs,
                "per second": len(sents) / secs,
            }
        )
        if beam == 5 and bs == 32:
            preds = [AmrGraph(id=g.id, metadata={}, tree=delinearize(t).tree) for t, g in zip(toks, test)]
    base = rows[0]["per second"]
    for r in rows:
        r["speed-up vs batch 1 greedy"] = r["per second"] / base
    p_lines, g_lines = [one_line(g) for g in preds], [one_line(g) for g in test]
    snow, _ = smatch_snowblink(p_lines, g_lines)
    ilp, _ = smatch_ilp(p_lines, g_lines)
    rows.append(
        {
            "what": "Smatch snowblink (seeded)",
            "n": len(test),
            "seconds": snow.seconds,
            "per second": len(test) / snow.seconds,
            "speed-up vs batch 1 greedy": None,
        }
    )
    rows.append(
        {
            "what": "Smatch++ ILP",
            "n": len(test),
            "seconds": ilp.seconds,
            "per second": len(test) / ilp.seconds,
            "speed-up vs batch 1 greedy": None,
        }
    )
    env = {
        "cpu": platform.processor() or platform.machine(),
        "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "params": sum(p.numel() for p in parser.model.parameters()),
    }
    out = {"rows": rows, "env": env, "ilp_vs_snowblink_time": ilp.seconds / snow.seconds}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(out, indent=1, default=float))
    echo(markdown_table(rows, floatfmt=".2f"))
    echo(f"env: {env}")
    return out
