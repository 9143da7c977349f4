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
from .steer import add_direction, addition_accuracy, answers, moved


@dataclass
class NumbersConfig:
    model: str = DEFAULT_MODEL
    data: str | None = None  # NumProbe-format JSON lines; default ../shared/data/numprobe/raw.jsonl
    train_per_digit: int | None = None  # None: the whole train split
    test_per_digit: int | None = None
    layers: list[int] | None = None  # hidden-state indices; None: all (0 = embeddings)
    mlp_layers: list[int] | None = None  # None: every probed layer; []: no MLP probes
    random_init: bool = True
    random_init_seeds: int = 2  # random-init controls (seed, seed + 1, ...): one random init is one seed
    addition_per_digit: int = 100
    steer_digits: int = 4  # the paper steers on 4-digit problems
    steer_prompts: int = 100
    steer_window: int = 6  # consecutive layers steered together (paper: 6)
    steer_starts: list[int] | None = None  # first layer of each window; None: every layer that fits
    steer_alphas: list[float] | None = None  # steps tried on the dev split, each a fraction of the mean residual
    # norm at that layer; None: STEER_ALPHAS. The best (window, step) on dev is reported on test.
    steer_random: int = 3  # random directions (seeds) compared with the probe direction on test
    ridge_alpha: float = 0.1
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


STEER_ALPHAS = [0.05, 0.1, 0.2, 0.4]


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

    out["items"] = best_items(store, result_rows, tr, te, y, cfg.ridge_alpha)
    rand_lc = []
    if cfg.random_init:
        out["random_init_items"] = []
        for rs in range(cfg.seed, cfg.seed + max(1, cfg.random_init_seeds)):
            torch.manual_seed(rs)
            with torch.device(model.device):
                rand = Transformer(model.cfg).to(model.dtype).eval()
            rstore = capture_numbers(
                rand, f"random-init|{model.cfg}|{rs}|{cfg.dtype}", ids, pos, layers, cfg.batch_size, log
            )
            rrows = probe_store(rstore, tr, te, y, digits, lambda l: ("ridge",), cfg.ridge_alpha, cfg.seed, log)[0]
            if rs == cfg.seed:
                out["random_init"] = rrows  # the first seed's table (the summary and the figures)
            out["random_init_items"].append(
                {"seed": rs, **best_items(rstore, rrows, tr, te, y, cfg.ridge_alpha, keys=(("last", "sum"),))}
            )
            rand_lc.append({"seed": rs, **length_controlled(rstore, tr, te, y, digits, cfg.ridge_alpha)})

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
    out["steering"], out["steering_test"] = steer(model, tok, problems, dirs, norms, cfg, log)
    out["length_control"] = {
        "trained": length_controlled(store, tr, te, y, digits, cfg.ridge_alpha),
        **({"random_init": rand_lc[0]} if rand_lc else {}),
    }
    out["length_control_random"] = rand_lc  # every random-init seed (the first is length_control["random_init"])
    return out


BEST_KEYS = (("a", "a"), ("b", "b"), ("last", "sum"))
"""(position, target) probes whose per-item test predictions the report bootstraps."""


def best_items(
    store: ActivationStore,
    rows: list[dict[str, Any]],
    tr: np.ndarray,
    te: np.ndarray,
    y: np.ndarray,
    ridge_alpha: float,
    keys: Sequence[tuple[str, str]] = BEST_KEYS,
) -> dict[str, dict[str, Any]]:
    """Per test item, the targets and predictions of the best-R² Ridge probe for each (position, target) in `keys`,
    plus the probe with the best within-1 % accuracy anywhere ("acc"): refitted (closed-form Ridge, so the same fit)
    to give the report item-level bootstrap intervals. Keys are "position@target" strings."""
    ridge = [r for r in rows if r["probe"] == "ridge"]
    picks = {
        f"{p}@{t}": max((r for r in ridge if r["position"] == p and r["target"] == t), key=lambda r: r["r2"])
        for p, t in keys
    }
    if keys == BEST_KEYS:
        picks["acc"] = max(ridge, key=lambda r: r["acc_1pct"])
    out = {}
    for name, r in picks.items():
        pi, ti = D.POSITIONS.index(r["position"]), D.TARGETS.index(r["target"])
        X = store.layer(r["layer"])[:, pi]
        _, pred = fit_predict("ridge", X[tr], y[tr], X[te], ridge_alpha)
        out[name] = {
            "layer": r["layer"],
            "position": r["position"],
            "target": r["target"],
            "y": y[te, ti].tolist(),
            "pred": pred[:, ti].tolist(),
        }
    return out


def _steer_problems(problems: list[D.Problem], split: str, cfg: NumbersConfig) -> list[D.Problem]:
    return [p for p in problems if p.split == split and p.digits == cfg.steer_digits][: cfg.steer_prompts]


def steer(
    model: Transformer,
    tok: Any,
    problems: list[D.Problem],
    dirs: dict[int, np.ndarray],
    norms: dict[int, float],
    cfg: NumbersConfig,
    log: Callable[[str], None] = _log,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Steering tuned on dev, reported on test.

    Dev (the `val` split): for every window of layers and every step in `steer_alphas`, the rate at which +alpha
    along the sum probe's direction raises the answer and -alpha lowers it. The (window, step) with the best mean
    of the two is then run on the test split, beside `steer_random` random unit directions at the same step and
    signs (the paper's random-intervention control). Per test prompt the score is the mean of its up and down
    moves; the probe's score minus the random directions' mean score, bootstrapped over prompts, is the evidence.
    Returns (one dev row per window, at that window's best step; the test result or None)."""
    L = model.cfg.num_layers
    steerable = [l for l in sorted(dirs) if 1 <= l <= L - 1]  # block outputs before the final norm
    dev, test = _steer_problems(problems, "val", cfg), _steer_problems(problems, "test", cfg)
    if not steerable or cfg.steer_prompts <= 0 or not dev or not test:
        return [], None
    alphas = cfg.steer_alphas or STEER_ALPHAS
    max_new = 3 * cfg.steer_digits + 8
    starts = [
        s
        for s in (cfg.steer_starts if cfg.steer_starts is not None else steerable)
        if s >= 1 and s + cfg.steer_window - 1 <= L - 1
    ]

    def run(ids: list[list[int]], clean: list[int | None], window: list[int], vecs, alpha: float) -> dict[str, list]:
        moves = {}
        for name, sign in (("up", 1.0), ("down", -1.0)):
            hooks: dict[int, Any] = {}
            for l in window:
                hooks.update(add_direction({l: vecs[l]}, sign * alpha * norms[l], model.dtype, model.device))
            steered = answers(model, tok, ids, max_new, hooks=hooks, batch_size=cfg.batch_size)
            moves[name] = moved(clean, steered, sign)
        return moves

    dev_ids = D.encode(tok, dev)[0]
    dev_clean = answers(model, tok, dev_ids, max_new, batch_size=cfg.batch_size)
    rows: list[dict[str, Any]] = []
    for s in starts:
        window = [l for l in range(s, s + cfg.steer_window) if l in dirs and 1 <= l <= L - 1]
        if not window:
            continue
        by_alpha = {}
        for a in alphas:
            m = run(dev_ids, dev_clean, window, dirs, a)
            by_alpha[a] = {"up": float(np.mean(m["up"])), "down": float(np.mean(m["down"]))}
        best = max(alphas, key=lambda a: by_alpha[a]["up"] + by_alpha[a]["down"])
        rows.append(
            {
                "start": s,
                "layers": window,
                "alpha_frac": best,
                "prompts": len(dev),
                "up": by_alpha[best]["up"],
                "down": by_alpha[best]["down"],
                "by_alpha": {str(a): v for a, v in by_alpha.items()},
            }
        )
        log(
            f"steer dev layers {window[0]}-{window[-1]}: best step {best}: up {rows[-1]['up']:.2f} down {rows[-1]['down']:.2f}"
        )
    if not rows:
        return [], None
    pick = max(rows, key=lambda r: r["up"] + r["down"])
    window, alpha = pick["layers"], pick["alpha_frac"]
    ids = D.encode(tok, test)[0]
    clean = answers(model, tok, ids, max_new, batch_size=cfg.batch_size)
    probe = run(ids, clean, window, dirs, alpha)
    rng = np.random.default_rng(cfg.seed)
    randoms = []
    for _ in range(cfg.steer_random):
        vecs = {l: (lambda v: v / np.linalg.norm(v))(rng.standard_normal(dirs[l].shape)) for l in window}
        randoms.append(run(ids, clean, window, vecs, alpha))
    score = (np.array(probe["up"], float) + np.array(probe["down"], float)) / 2
    rand_score = np.mean([(np.array(r["up"], float) + np.array(r["down"], float)) / 2 for r in randoms], axis=0)
    test_row = {
        "layers": window,
        "alpha_frac": alpha,
        "prompts": len(test),
        "random_directions": cfg.steer_random,
        "up": float(np.mean(probe["up"])),
        "down": float(np.mean(probe["down"])),
        "random_up": float(np.mean([np.mean(r["up"]) for r in randoms])),
        "random_down": float(np.mean([np.mean(r["down"]) for r in randoms])),
        "score": score.tolist(),
        "random_score": rand_score.tolist(),
    }
    log(
        f"steer test layers {window[0]}-{window[-1]} step {alpha}: probe {score.mean():.2f} random {rand_score.mean():.2f}"
    )
    return rows, test_row


def length_controlled(
    store: ActivationStore, tr: np.ndarray, te: np.ndarray, y: np.ndarray, digits: np.ndarray, ridge_alpha: float
) -> dict[str, Any]:
    """The digit-count confound: NumProbe operands share their length, and length alone predicts most of log2(a+b).
    Digit count enters as a covariate (Frisch-Waugh): target and activations both have their train-split mean per
    digit count removed, a Ridge probe maps residual activations to residual log2(a+b) at the last token, and
    `partial_r2` = 1 - SSE(probe) / SSE(digit-count means) on test is the share of the within-length variance the
    probe explains. The layer is chosen on a held-out quarter of the train split, never on test.
    Returns the chosen layer, its partial R² per layer (train-dev) and the per-test-item squared errors of the
    probe and of the digit-count baseline (for bootstrap intervals)."""
    last, k = D.POSITIONS.index("last"), D.TARGETS.index("sum")
    yk = y[:, k]

    def residualise(fit_idx: np.ndarray, all_idx: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = v[all_idx].astype(np.float64).copy()
        for d in np.unique(digits[all_idx]):
            m = v[fit_idx][digits[fit_idx] == d].mean(axis=0) if (digits[fit_idx] == d).any() else v[fit_idx].mean(0)
            out[digits[all_idx] == d] -= m
        return out

    def errors(fit_idx: np.ndarray, eval_idx: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ytr, yte = residualise(fit_idx, fit_idx, yk), residualise(fit_idx, eval_idx, yk)
        xtr, xte = residualise(fit_idx, fit_idx, X), residualise(fit_idx, eval_idx, X)
        _, pred = fit_predict("ridge", xtr, ytr[:, None], xte, ridge_alpha)
        return (yte - pred[:, 0]) ** 2, yte**2

    rng = np.random.default_rng(0)
    perm = rng.permutation(tr)
    cut = max(1, len(perm) // 4)
    t_dev, t_fit = np.sort(perm[:cut]), np.sort(perm[cut:])
    per_layer = {}
    for layer in store.layers:
        e, b = errors(t_fit, t_dev, store.layer(layer)[:, last])
        per_layer[layer] = float(1 - e.sum() / b.sum())
    best = max(per_layer, key=per_layer.get)
    e, b = errors(tr, te, store.layer(best)[:, last])
    return {
        "layer": best,
        "dev_partial_r2": per_layer,
        "partial_r2": float(1 - e.sum() / b.sum()),
        "sq_err": e.tolist(),
        "sq_err_digits_only": b.tolist(),
    }
