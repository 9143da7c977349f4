"""The paper's small-scale comparison (Sec. 4.2, Table 1; Sec. 4.4, Fig. 3; Sec. 4.5, Fig. 4-5), from scratch.

Every architecture sees the same tokens (seeded windows), optimizer (AdamW), schedule (warm-up + cosine)
and step count; they differ only in the FFN. Sizes are chosen as in the paper: with W the FFN width,
Switch = top-1 of 16 x W, GShard = top-2 of 16 x W, DeepSeekMoE = 1 shared + top-7 of 63 x W/4 (equal total
and activated expert parameters to GShard), Dense = one FFN of width W. For one seed, every architecture also
starts from the same non-FFN weights (`MoETransformer.init_weights(seed=...)`), so differences are paired by seed.
Each run records its held-out loss at `curve_points` steps along training (the loss-vs-tokens curve).

Each finished run is cached (JSON + weights) under the user cache, so an interrupted reproduction resumes where it
stopped. The cache key holds the setup, the seed, the device and a fingerprint of everything that decides the
numbers (the training code's source, torch and tokenizers versions, the CPU's instruction set): training is
deterministic, so a cached run is the run a fresh process would produce (tests/moe/test_experiment.py checks it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..core.config import ModelConfig
from ..core.paths import atomic_write_text, cache_dir
from ..core.train import TrainConfig, lm_loss, train
from .data import batches, eval_windows, tokenized_corpus
from .layer import MoE, MoEConfig
from .model import MoETransformer

MAIN = ["dense", "switch", "gshard", "deepseekmoe"]
LADDER = ["0+2/16", "1+1/15", "1+3/31", "1+7/63"]  # Fig. 3: shared isolation, then finer segmentation


@dataclass
class Setup:
    vocab: int = 8192  # the paper's BPE vocabulary size
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    width: int = 512  # W: the dense FFN width = one GShard expert
    seq_len: int = 256
    batch: int = 16
    steps: int = 2000
    lr: float = 2e-3
    warmup: int = 100
    alpha1: float = 0.01  # expert-level balance factor for every MoE (the paper's 2B setting)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_windows: int = 128
    data: str | None = None  # None: the Python standard library
    ladder: bool = True
    archs: list[str] = field(default_factory=lambda: list(MAIN))  # which of MAIN to train
    curve_points: int = 6  # held-out loss every steps // curve_points steps (and at the end); 0: final only

    def key(self, arch: str, seed: int, device: str = "cpu") -> str:
        """Cache key of one run: the setup fields that shape it, the seed, the device and `fingerprint()`."""
        d = asdict(self)
        for k in ("seeds", "ladder", "archs"):  # which runs are done, not how one run goes
            d.pop(k)
        d["device"], d["code"] = device, fingerprint()
        h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
        return f"{h}-{arch.replace('/', 'of').replace('+', 'p')}-s{seed}"


_CODE = [  # what decides a run's numbers (the report and CLI code do not)
    "moe/layer.py",
    "moe/dispatch.py",
    "moe/model.py",
    "moe/experiment.py",
    "moe/data.py",
    "core/config.py",
    "core/model.py",
    "core/train.py",
    "core/kernels.py",
    "core/csrc/decode_kernels.cpp",
]


@functools.cache
def fingerprint() -> str:
    """Hash of the training code's source, torch / tokenizers versions and the CPU instruction set torch uses:
    a cached run is reused only where a fresh one would give the same bits."""
    import tokenizers

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(
        f"{torch.__version__}|{tokenizers.__version__}|{torch.backends.cpu.get_cpu_capability()}".encode()
    )
    for rel in _CODE:
        f = root / rel
        h.update(rel.encode() + b"\0" + (f.read_bytes() if f.exists() else b"-"))
    return h.hexdigest()[:12]


FULL = Setup()
QUICK = Setup(
    vocab=1024,
    hidden=64,
    layers=2,
    heads=4,
    width=128,
    seq_len=64,
    batch=16,
    steps=300,
    lr=3e-3,
    warmup=30,
    eval_windows=128,
)


def arch_config(arch: str, s: Setup) -> MoEConfig:
    """The FFN of each compared architecture, all as configurations of the one `MoE` layer."""
    w, a = s.width, s.alpha1
    table: dict[str, Callable[[], MoEConfig]] = {
        "dense": lambda: MoEConfig(s.hidden, w, shared_size=w),
        "switch": lambda: MoEConfig(s.hidden, w, n_routed=16, top_k=1, alpha1=a),
        "gshard": lambda: MoEConfig(s.hidden, w, n_routed=16, top_k=2, alpha1=a),
        "deepseekmoe": lambda: MoEConfig(s.hidden, w // 4, n_routed=63, top_k=7, n_shared=1, alpha1=a),
        "0+2/16": lambda: MoEConfig(s.hidden, w, n_routed=16, top_k=2, alpha1=a),
        "1+1/15": lambda: MoEConfig(s.hidden, w, n_routed=15, top_k=1, n_shared=1, alpha1=a),
        "1+3/31": lambda: MoEConfig(s.hidden, w // 2, n_routed=31, top_k=3, n_shared=1, alpha1=a),
        "1+7/63": lambda: MoEConfig(s.hidden, w // 4, n_routed=63, top_k=7, n_shared=1, alpha1=a),
    }
    if arch not in table:
        from ..core.errors import LmlabError

        raise LmlabError(f"unknown architecture {arch!r}", hint=f"choose from {', '.join(table)}")
    return table[arch]()


def build_model(s: Setup, arch: str, seed: int = 0) -> MoETransformer:
    cfg = ModelConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.width,
        num_layers=s.layers,
        num_heads=s.heads,
        num_kv_heads=s.heads,
        head_dim=s.hidden // s.heads,
        max_position_embeddings=s.seq_len,
        tie_word_embeddings=True,
    )
    return MoETransformer(cfg, arch_config(arch, s), first_dense=0).init_weights(seed=seed)


def _loss_fn(raw: MoETransformer) -> Callable[[torch.nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]:
    """LM loss + balance losses; `m` may be raw or DDP-wrapped (aux losses are read from the raw layers)."""

    def fn(m: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        batch = batch.to(raw.device)
        out = m(batch[:, :-1], raw.new_cache(batch.shape[0], batch.shape[1] - 1), logits="all")
        ce = lm_loss(out.logits, batch[:, 1:])
        aux = raw.aux_loss()
        stats = [st for st in raw.router_stats() if st is not None]
        load = max(
            (float(st.tokens_per_expert.max() / st.tokens_per_expert.float().mean()) for st in stats), default=1.0
        )
        return ce + aux, {
            "ce": float(ce.detach()),
            "aux": float(aux.detach()),
            "max_load": load,
            "dropped": float(sum(int(st.dropped) for st in stats)),
        }

    return fn


@torch.no_grad()
def evaluate(model: MoETransformer, windows: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over the validation windows."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i : i + batch].to(model.device)
        logits = model.logits(w[:, :-1])
        total += float(lm_loss(logits, w[:, 1:])) * w.shape[0]
        n += w.shape[0]
    return total / n


def train_run(
    s: Setup,
    arch: str,
    seed: int,
    train_ids: torch.Tensor,
    val: torch.Tensor,
    accelerator: Any = None,
    log: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], MoETransformer]:
    """Train one architecture from scratch (or load the cached result); returns (row, model).

    `row["cached"]` says which: True when the row and weights came from the cache (same key, see `Setup.key`)."""
    root = cache_dir("moe", "runs")
    key = s.key(arch, seed, device)
    torch.manual_seed(seed)
    model = build_model(s, arch, seed)
    if (root / f"{key}.json").exists() and (root / f"{key}.pt").exists():
        model.load_state_dict(torch.load(root / f"{key}.pt"))
        return {**json.loads((root / f"{key}.json").read_text()), "cached": True}, model.eval()
    model.to(accelerator.device if accelerator is not None else device)
    every = max(1, s.steps // s.curve_points) if s.curve_points else 0
    tc = TrainConfig(
        steps=s.steps, lr=s.lr, warmup=s.warmup, seed=seed, log_every=max(1, s.steps // 5), eval_every=every
    )
    t0, c0 = time.time(), time.process_time()
    rank_seed = seed * 1000 + (accelerator.process_index if accelerator is not None else 0)
    hist = train(
        model,
        batches(train_ids, s.batch, s.seq_len, rank_seed),
        _loss_fn(model),
        tc,
        eval_fn=lambda m: {"val_loss": evaluate(model, val)},  # no RNG, no state: the run is the same without it
        accelerator=accelerator,
        log=(
            lambda r: log(
                f"{arch} seed {seed} step {r['step']} ce {r['ce']:.3f} max/mean expert load {r['max_load']:.2f}"
            )
        )
        if log
        else None,
    )
    # the loop's last evaluation is of the final weights: reuse it (eval mode, no grad: the same numbers)
    val_loss = hist[-1]["val_loss"] if "val_loss" in hist[-1] else evaluate(model.eval(), val)
    cpu_seconds = time.process_time() - c0
    model = model.cpu()
    counts = model.param_counts()
    tokens_per_step = s.batch * s.seq_len
    row = {
        "arch": arch,
        "seed": seed,
        "val_loss": val_loss,
        **counts,
        "flops_per_token": model.flops_per_token(s.seq_len),
        "train_ce_last": hist[-1]["ce"],
        "train_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(cpu_seconds, 1),  # process CPU time (user + sys), evaluations included
        "steps": s.steps,
        "tokens": s.steps * tokens_per_step,
        "curve": [
            {"step": h["step"], "tokens": h["step"] * tokens_per_step, "val_loss": h["val_loss"]}
            for h in hist
            if "val_loss" in h
        ]
        or [{"step": s.steps, "tokens": s.steps * tokens_per_step, "val_loss": val_loss}],  # curve_points = 0
        "key": key,
    }
    if accelerator is None or accelerator.is_main_process:
        tmp = root / f".{key}.pt.tmp"
        torch.save(model.state_dict(), tmp)
        tmp.replace(root / f"{key}.pt")
        atomic_write_text(root / f"{key}.json", json.dumps(row))
    return {**row, "cached": False}, model


@torch.no_grad()
def specialization(model: MoETransformer, val: torch.Tensor, steps: int = 4) -> dict[str, Any]:
    """Fig. 4: loss when a ratio r/16 (r = 0..steps) of the routed experts - each token's highest-affinity
    ones - is disabled and top-k re-picked from the rest (16 experts: r masked; 63 experts: ~4r masked)."""
    layers = model.moe_layers()
    n = layers[0].cfg.n_routed
    masked = [min(n - layers[0].cfg.top_k, round(r * n / 16)) for r in range(steps + 1)]
    losses = []
    for k in masked:
        for m in layers:
            m.mask_top = k
        losses.append(evaluate(model, val))
    for m in layers:
        m.mask_top = 0
    return {"ratio": [r / 16 for r in range(steps + 1)], "masked_experts": masked, "val_loss": losses}


@torch.no_grad()
def shared_ablation(model: MoETransformer, val: torch.Tensor) -> dict[str, float]:
    """Fig. 5 / Sec. 4.5: disable the shared expert and activate one more routed expert instead."""
    layers: list[MoE] = model.moe_layers()
    base = evaluate(model, val)
    for m in layers:
        m.shared_enabled, m.extra_k = False, 1
    off = evaluate(model, val)
    for m in layers:
        m.shared_enabled, m.extra_k = True, 0
    return {"with_shared": base, "shared_disabled_plus_one_routed": off}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample std and 95 % t-interval of the held-out loss per architecture over seeds."""
    from .stats import t_interval

    out = []
    for arch in dict.fromkeys(r["arch"] for r in runs):
        v = [r["val_loss"] for r in runs if r["arch"] == arch]
        m, lo, hi = t_interval(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
        r0 = next(r for r in runs if r["arch"] == arch)
        out.append(
            {
                "arch": arch,
                "seeds": len(v),
                "val_loss_mean": m,
                "val_loss_std": sd,
                "ci95_lo": lo,
                "ci95_hi": hi,
                "total_params": r0["total_params"],
                "activated_params": r0["activated_params"],
                "flops_per_token": r0["flops_per_token"],
            }
        )
    return out


def run_all(
    s: Setup,
    log: Callable[[str], None] = print,
    save: Callable[[dict[str, Any]], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The whole comparison; `save(result)` is called after every finished run (partial results survive)."""
    t0 = time.time()
    threads = torch.get_num_threads()
    if s.hidden <= 128:
        torch.set_num_threads(1)  # tiny models: one thread beats 2 (sync overhead), and far more so under load
    try:
        return _run_all(s, log, save, t0, device)
    finally:
        torch.set_num_threads(threads)


def _run_all(
    s: Setup, log: Callable[[str], None], save: Callable[[dict[str, Any]], None] | None, t0: float, device: str
) -> dict[str, Any]:
    unknown = [a for a in s.archs if a not in MAIN]
    if unknown or not {"gshard", "deepseekmoe"} <= set(s.archs):
        from ..core.errors import LmlabError

        raise LmlabError(
            f"archs {s.archs}: each must be one of {', '.join(MAIN)}, and gshard and deepseekmoe must be among them",
            hint="e.g. --archs dense,gshard,deepseekmoe",
        )
    c0 = time.process_time()
    train_ids, val_ids, _ = tokenized_corpus(s.data, s.vocab)
    val = eval_windows(val_ids, s.seq_len, s.eval_windows)
    result: dict[str, Any] = {
        "setup": asdict(s),
        "code_fingerprint": fingerprint(),
        "corpus_tokens": {"train": train_ids.numel(), "val": val_ids.numel()},
        "runs": [],
        "ablation": [],
        "specialization": [],
    }
    for seed in s.seeds:
        models: dict[str, MoETransformer] = {}
        for arch in s.archs:
            row, model = train_run(s, arch, seed, train_ids, val, log=log, device=device)
            log(
                f"{arch} seed {seed}: val loss {row['val_loss']:.4f} ({row['cpu_seconds']} CPU-s, cached {row['cached']})"
            )
            result["runs"].append(row)
            models[arch] = model
            if save:
                save(result)
        if s.ladder:
            for arch in LADDER:
                same = {"0+2/16": "gshard", "1+7/63": "deepseekmoe"}.get(arch)
                row = (
                    dict(next(r for r in result["runs"] if r["arch"] == same and r["seed"] == seed))
                    if same
                    else train_run(s, arch, seed, train_ids, val, log=log, device=device)[0]
                )
                result["ablation"].append({**row, "arch": arch, "same_as": same})
                if save:
                    save(result)
        result["specialization"].append(
            {
                "seed": seed,
                "masked_top": {a: specialization(models[a], val) for a in ("gshard", "deepseekmoe")},
                "shared": shared_ablation(models["deepseekmoe"], val),
            }
        )
    result["summary"] = summarize(result["runs"])
    result["seconds"] = round(time.time() - t0, 1)
    result["cpu_seconds"] = round(time.process_time() - c0, 1)
    if save:
        save(result)
    return result


def with_overrides(s: Setup, **kw: Any) -> Setup:
    return replace(s, **{k: v for k, v in kw.items() if v is not None})
