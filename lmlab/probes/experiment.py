"""`lmlab probe numbers`: the paper's experiment end to end on one model.

capture (train + test prompts, all chosen layers, 3 positions) -> Ridge / MLP probes per layer, position
and target -> metrics overall and per digit count -> the same probes on a random-init copy of the model
(control) -> the model's own addition accuracy -> steering along the sum probe's direction.
Captures are cached by content fingerprint, so reruns and interrupted runs skip finished shards.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lmlab.core.loader import DEFAULT_MODEL, load_model
from lmlab.core.model import Transformer
from lmlab.core.paths import cache_dir

from . import data as D
from .capture import ActivationStore, capture, native_hidden_fn
from .fit import direction, fit_predict, metrics
from .steer import add_direction, addition_accuracy, answers, moved_rate


@dataclass
class NumbersConfig:
    model: str = DEFAULT_MODEL
    data: str | None = None  # NumProbe-format JSON lines; default ../shared/data/numprobe/raw.jsonl
    train_per_digit: int | None = None  # None: the whole train split
    test_per_digit: int | None = None
    layers: list[int] | None = None  # hidden-state indices; None: all (0 = embeddings)
    mlp_layers: list[int] | None = None  # None: every probed layer; []: no MLP probes
    random_init: bool = True
    addition_per_digit: int = 100
    steer_digits: int = 4  # the paper steers on 4-digit problems
    steer_prompts: int = 100
    steer_window: int = 6  # consecutive layers steered together (paper: 6)
    steer_starts: list[int] | None = None  # first layer of each window; None: every layer that fits
    steer_alpha: float = 0.1  # step as a fraction of the mean residual norm at that layer
    ridge_alpha: float = 0.1
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


def quick_config(model: str = DEFAULT_MODEL, seed: int = 0) -> NumbersConfig:
    """The minutes-scale subset used by `lmlab reproduce --quick` and `lmlab probe numbers --quick`: all hidden
    states, 40 train / 15 test prompts per digit count, MLP probes on every 6th layer, 16 steering prompts on
    windows starting every 6th layer."""
    return NumbersConfig(
        model=model,
        train_per_digit=40,
        test_per_digit=15,
        mlp_layers=list(range(0, 64, 6)),
        addition_per_digit=6,
        steer_prompts=16,
        steer_starts=list(range(1, 64, 6)),
        seed=seed,
    )


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()[:16]


def _log(msg: str) -> None:
    print(f"[probe] {msg}", file=sys.stderr, flush=True)


def capture_numbers(
    model: Transformer,
    tag: str,
    ids: list[list[int]],
    pos: list[list[int]],
    layers: list[int],
    batch_size: int,
    log: Callable[[str], None] = _log,
) -> ActivationStore:
    fp = _fingerprint(tag, ids, pos, layers)
    root = cache_dir("probes", "captures", fp)
    log(f"capturing {len(ids)} prompts x {len(layers)} layers x {len(D.POSITIONS)} positions -> {root}")
    return capture(
        native_hidden_fn(model),
        ids,
        pos,
        layers,
        root,
        position_names=D.POSITIONS,
        fingerprint=fp,
        batch_size=batch_size,
        device=model.device,
    )


def probe_store(
    store: ActivationStore,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    y: np.ndarray,
    digits: np.ndarray,
    kinds_for: Callable[[int], Sequence[str]],
    ridge_alpha: float,
    seed: int,
    log: Callable[[str], None] = _log,
) -> tuple[list[dict[str, Any]], dict[int, np.ndarray], dict[int, float]]:
    """All probes on one capture. Returns result rows, the 'sum' Ridge direction at the last position per
    layer (for steering) and the mean residual norm at the last position per layer."""
    rows: list[dict[str, Any]] = []
    dirs: dict[int, np.ndarray] = {}
    norms: dict[int, float] = {}
    last = D.POSITIONS.index("last")
    for layer in store.layers:
        X = store.layer(layer)
        norms[layer] = float(np.linalg.norm(X[:, last], axis=-1).mean())
        for pi, pname in enumerate(D.POSITIONS):
            for kind in kinds_for(layer):
                probe, pred = fit_predict(kind, X[train_idx, pi], y[train_idx], X[test_idx, pi], ridge_alpha, seed)
                if kind == "ridge" and pi == last:
                    dirs[layer] = direction(probe, D.TARGETS.index("sum"))
                for ti, target in enumerate(D.TARGETS):
                    yt, pt = y[test_idx, ti], pred[:, ti]
                    by = {
                        int(d): metrics(yt[digits[test_idx] == d], pt[digits[test_idx] == d])
                        for d in np.unique(digits[test_idx])
                    }
                    rows.append(
                        {
                            "layer": layer,
                            "position": pname,
                            "target": target,
                            "probe": kind,
                            **metrics(yt, pt),
                            "by_digits": by,
                        }
                    )
        log(
            f"layer {layer}: ridge R2(sum@last) = {next(r['r2'] for r in rows[::-1] if r['probe'] == 'ridge' and r['position'] == 'last' and r['target'] == 'sum'):.3f}"
        )
    return rows, dirs, norms


def run_numbers(cfg: NumbersConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the experiment; returns the JSON-ready result (see the issue's schema, plus controls and steering)."""
    problems = D.load_problems(cfg.data)  # validate the input before the (slow) model load
    lm = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    model, tok = lm.model, lm.tokenizer
    train = D.subset(problems, "train", cfg.train_per_digit, cfg.seed)
    test = D.subset(problems, "test", cfg.test_per_digit, cfg.seed)
    if not train or not test:
        from lmlab.core.errors import LmlabError

        raise LmlabError(
            f"{cfg.data or D.default_data()}: need rows in both the train and test splits", hint="set the split field"
        )
    rows = train + test
    ids, pos = D.encode(tok, rows)
    n_hidden = model.cfg.num_layers + 1
    layers = sorted(set(cfg.layers)) if cfg.layers is not None else list(range(n_hidden))
    y = np.log2(np.array([[p.a, p.b, p.sum] for p in rows], dtype=np.float64))
    digits = np.array([p.digits for p in rows])
    tr, te = np.arange(len(train)), np.arange(len(train), len(rows))
    mlp = set(layers if cfg.mlp_layers is None else cfg.mlp_layers)
    kinds = lambda l: ("ridge", "mlp") if l in mlp else ("ridge",)  # noqa: E731

    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in lm.path.glob("*.safetensors"))
    store = capture_numbers(model, f"{lm.path}|{weights}|{cfg.dtype}", ids, pos, layers, cfg.batch_size, log)
    result_rows, dirs, norms = probe_store(store, tr, te, y, digits, kinds, cfg.ridge_alpha, cfg.seed, log)
    out: dict[str, Any] = {
        "model": cfg.model,
        "config": asdict(cfg),
        "n_train": len(train),
        "n_test": len(test),
        "layers": result_rows,
        "residual_norm": norms,
    }

    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        with torch.device(model.device):
            rand = Transformer(model.cfg).to(model.dtype).eval()
        rstore = capture_numbers(
            rand, f"random-init|{model.cfg}|{cfg.seed}|{cfg.dtype}", ids, pos, layers, cfg.batch_size, log
        )
        out["random_init"] = probe_store(
            rstore, tr, te, y, digits, lambda l: ("ridge",), cfg.ridge_alpha, cfg.seed, log
        )[0]

    add_set = D.subset(problems, "test", cfg.addition_per_digit, cfg.seed + 1)
    preds: list[int | None] = []
    for d in sorted({p.digits for p in add_set}):
        group = [p for p in add_set if p.digits == d]
        preds_d = answers(model, tok, D.encode(tok, group)[0], 3 * d + 8, batch_size=cfg.batch_size)
        log(f"addition {d} digits: {np.mean([a == p.sum for a, p in zip(preds_d, group)]):.2f}")
        preds += preds_d
    out["addition_accuracy"] = addition_accuracy(
        [p for d in sorted({p.digits for p in add_set}) for p in add_set if p.digits == d], preds
    )
    out["steering"] = steer(model, tok, problems, dirs, norms, cfg, log)
    return out


def steer(
    model: Transformer,
    tok: Any,
    problems: list[D.Problem],
    dirs: dict[int, np.ndarray],
    norms: dict[int, float],
    cfg: NumbersConfig,
    log: Callable[[str], None] = _log,
) -> list[dict[str, Any]]:
    """Rate at which the answer moves the expected way, per window of layers, for +alpha, -alpha and a random
    direction (+alpha; the paper's random-intervention control)."""
    L = model.cfg.num_layers
    steerable = [l for l in sorted(dirs) if 1 <= l <= L - 1]  # block outputs before the final norm
    if not steerable or cfg.steer_prompts <= 0:
        return []
    probs = [p for p in problems if p.split == "test" and p.digits == cfg.steer_digits][: cfg.steer_prompts]
    if not probs:
        return []
    ids = D.encode(tok, probs)[0]
    max_new = 3 * cfg.steer_digits + 8
    clean = answers(model, tok, ids, max_new, batch_size=cfg.batch_size)
    starts = [
        s
        for s in (cfg.steer_starts if cfg.steer_starts is not None else steerable)
        if s >= 1 and s + cfg.steer_window - 1 <= L - 1
    ]
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for s in starts:
        window = [l for l in range(s, s + cfg.steer_window) if l in dirs and 1 <= l <= L - 1]
        if not window:
            continue
        row: dict[str, Any] = {"start": s, "layers": window, "alpha_frac": cfg.steer_alpha, "prompts": len(probs)}
        rand_dirs = {l: (lambda v: v / np.linalg.norm(v))(rng.standard_normal(dirs[l].shape)) for l in window}
        for name, vecs, sign in (("up", dirs, 1.0), ("down", dirs, -1.0), ("random_up", rand_dirs, 1.0)):
            hooks: dict[int, Any] = {}
            for l in window:
                hooks.update(add_direction({l: vecs[l]}, sign * cfg.steer_alpha * norms[l], model.dtype, model.device))
            steered = answers(model, tok, ids, max_new, hooks=hooks, batch_size=cfg.batch_size)
            row[name] = moved_rate(clean, steered, sign)
        log(
            f"steer layers {window[0]}-{window[-1]}: up {row['up']:.2f} down {row['down']:.2f} random {row['random_up']:.2f}"
        )
        rows.append(row)
    return rows
