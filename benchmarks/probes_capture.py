"""Capture overhead: `lmlab.probes.capture` (all hidden states x 3 positions, gathered, copied to CPU and written
to safetensors shards) vs a plain forward pass (logits="none") over the same batches, same process, interleaved.

    .venv/bin/python benchmarks/probes_capture.py [--prompts 256] [--repeats 5] [--json benchmarks/results/probes_capture.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmlab.core.loader import load_model
from lmlab.core.paths import atomic_write_text
from lmlab.core.report import markdown_table
from lmlab.probes import data as D
from lmlab.probes.capture import capture, native_hidden_fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/probes_capture.json"))
    a = ap.parse_args()
    lm = load_model(a.model)
    model = lm.model
    probs = D.subset(D.load_problems(), "test", max(1, a.prompts // 9))[: a.prompts]
    ids, pos = D.encode(lm.tokenizer, probs)
    layers = list(range(model.cfg.num_layers + 1))

    @torch.inference_mode()
    def plain() -> None:
        for s in range(0, len(ids), a.batch_size):
            chunk = ids[s : s + a.batch_size]
            lens = [len(x) for x in chunk]
            T = max(lens)
            x = torch.tensor([r + [0] * (T - len(r)) for r in chunk])
            model(x, model.new_cache(len(chunk), T), num_tokens=lens, logits="none")

    def captured() -> None:
        root = Path(tempfile.mkdtemp(prefix="probes-bench-"))
        try:
            capture(
                native_hidden_fn(model),
                ids,
                pos,
                layers,
                root / "c",
                position_names=D.POSITIONS,
                batch_size=a.batch_size,
                shard_rows=128,
            )
        finally:
            shutil.rmtree(root)

    plain()
    captured()  # warm-up both
    times: dict[str, list[float]] = {"plain forward": [], "capture (31 layers x 3 positions, to disk)": []}
    for _ in range(a.repeats):  # interleaved so machine-load drift hits both alike
        for name, fn in zip(times, (plain, captured)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain forward"])
    rows = [
        {
            "what": k,
            "median s": statistics.median(v),
            "min s": min(v),
            "ratio (median)": statistics.median(v) / base,
            "ratio (min)": min(v) / min(times["plain forward"]),
        }
        for k, v in times.items()
    ]
    print(markdown_table(rows))
    tokens = sum(len(x) for x in ids)
    atomic_write_text(
        a.json,
        json.dumps(
            {
                "model": a.model,
                "prompts": len(ids),
                "tokens": tokens,
                "batch_size": a.batch_size,
                "layers": len(layers),
                "positions": len(D.POSITIONS),
                "repeats": a.repeats,
                "threads": torch.get_num_threads(),
                "times": times,
                "rows": rows,
            },
            indent=1,
        ),
    )


if __name__ == "__main__":
    main()
