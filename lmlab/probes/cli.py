"""`lmlab probe ...`: the number-probing experiment, activation capture for any data set, and data generation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from lmlab.core.errors import LmlabError

sub = typer.Typer(
    no_args_is_help=True, help="Probe hidden states for numbers (arXiv:2401.03735) and capture activations."
)


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmlabError(f"{what} {text!r}: expected comma-separated integers", hint="e.g. 0,6,12,18") from None


@sub.command()
def numbers(
    json_path: Path = typer.Option(..., "--json", help="Write the results here."),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Alias, checkpoint dir, .gguf file or hub id."
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="NumProbe-format JSON lines (default ../shared/data/numprobe/raw.jsonl)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Minutes-scale subset (the reproduction's settings)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Hidden-state indices, e.g. 0,5,10 (default all)."),
    mlp_layers: Optional[str] = typer.Option(
        None, "--mlp-layers", help="Layers that also get an MLP probe ('' for none; default all)."
    ),
    train_per_digit: Optional[int] = typer.Option(None, "--train-per-digit"),
    test_per_digit: Optional[int] = typer.Option(None, "--test-per-digit"),
    random_init: bool = typer.Option(
        True, "--random-init/--no-random-init", help="Also probe a random-init copy (control)."
    ),
    addition_per_digit: Optional[int] = typer.Option(None, "--addition-per-digit"),
    steer_prompts: Optional[int] = typer.Option(None, "--steer-prompts", help="0 disables steering."),
    steer_alpha: list[float] = typer.Option(
        [],
        "--steer-alpha",
        help="Step(s) tried on the dev split, as a fraction of the mean residual norm (repeatable).",
    ),
    steer_window: Optional[int] = typer.Option(None, "--steer-window"),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Also write the figures into this folder."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    batch_size: int = typer.Option(32, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The paper's experiment: probes per layer x position x target, controls, addition accuracy, steering."""
    from .experiment import NumbersConfig, quick_config, run_numbers

    cfg = quick_config(model) if quick else NumbersConfig(model=model)
    cfg.data, cfg.device, cfg.dtype, cfg.batch_size, cfg.seed, cfg.random_init = (
        (str(data) if data else None),
        device,
        dtype,
        batch_size,
        seed,
        random_init,
    )
    for name, value in (
        ("layers", _ints(layers, "--layers")),
        ("mlp_layers", _ints(mlp_layers, "--mlp-layers")),
        ("train_per_digit", train_per_digit),
        ("test_per_digit", test_per_digit),
        ("addition_per_digit", addition_per_digit),
        ("steer_prompts", steer_prompts),
        ("steer_alphas", list(steer_alpha) or None),
        ("steer_window", steer_window),
    ):
        if value is not None:
            setattr(cfg, name, value)
    result = run_numbers(cfg)
    from lmlab.core.paths import atomic_write_text

    atomic_write_text(json_path, json.dumps(result, indent=1, default=str))
    if figures is not None:
        from . import plots

        figures.mkdir(parents=True, exist_ok=True)
        for m in ("r2", "acc_1pct"):
            plots.heatmaps(result, figures, m)
        plots.r2_by_digits(result, figures)
        plots.steering(result, figures)
    best = max(
        (r for r in result["layers"] if r["probe"] == "ridge" and r["position"] == "last" and r["target"] == "sum"),
        key=lambda r: r["r2"],
    )
    typer.echo(
        f"best Ridge R2 for log2(a+b) at the last token: {best['r2']:.3f} (layer {best['layer']}); results: {json_path}"
    )


@sub.command()
def capture(
    out: Path = typer.Option(..., "--out", help="Activation store directory (resumes if it exists)."),
    data: Path = typer.Option(
        ..., "--data", help="JSON lines: {'text': ...} rows (last token) or NumProbe rows (a, b, last)."
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    layers: Optional[str] = typer.Option(None, "--layers", help="Hidden-state indices (default all)."),
    backend: str = typer.Option("native", "--backend", help="native | transformers"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype."),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="float32 | float16 on disk."),
    batch_size: int = typer.Option(32, "--batch-size"),
    shard_rows: int = typer.Option(
        256, "--shard-rows", help="Rows per shard (memory held while capturing: rows x layers x positions x hidden)."
    ),
) -> None:
    """Capture residual-stream activations for a data set into safetensors shards (resumable)."""
    import torch

    from lmlab.core.loader import load_model, load_tokenizer, resolve

    from . import data as D
    from .capture import capture as run_capture
    from .capture import hf_hidden_fn, native_hidden_fn

    texts, rows = _read_capture_rows(data)
    if backend == "native":
        lm = load_model(model, dtype=dtype, device=device)
        fn, tok, n_hidden = native_hidden_fn(lm.model), lm.tokenizer, lm.config.num_layers + 1
    elif backend == "transformers":
        from transformers import AutoModelForCausalLM

        folder = resolve(model)
        hf = (
            AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)),
            )
            .to(device)
            .eval()
        )
        fn, tok, n_hidden = hf_hidden_fn(hf), load_tokenizer(folder), hf.config.num_hidden_layers + 1
    else:
        raise LmlabError(f"--backend {backend!r}", hint="native or transformers")
    if rows is not None:
        ids, pos = D.encode(tok, rows)
        names: list[str] = list(D.POSITIONS)
    else:
        ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
        pos, names = [[len(x) - 1] for x in ids], ["last"]
    chosen = _ints(layers, "--layers") or list(range(n_hidden))
    sd = {"float32": torch.float32, "float16": torch.float16}.get(store_dtype)
    if sd is None:
        raise LmlabError(f"--store-dtype {store_dtype!r}", hint="float32 or float16")
    store = run_capture(
        fn,
        ids,
        pos,
        chosen,
        out,
        position_names=names,
        fingerprint=f"{model}|{backend}|{data}|{dtype}",
        batch_size=batch_size,
        shard_rows=shard_rows,
        device=device,
        dtype=sd,
        progress=lambda done, total: print(f"\r{done}/{total} rows", end="", file=sys.stderr, flush=True),
    )
    typer.echo(f"\n{store.rows} rows x {len(store.layers)} layers x {len(names)} positions -> {out}")


def _read_capture_rows(path: Path):
    """Rows with 'text' -> (texts, None); NumProbe rows -> (None, problems)."""
    from . import data as D

    if not path.exists():
        raise LmlabError(f"{path}: no such file")
    first = next((l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()), "")
    try:
        has_text = "text" in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        raise LmlabError(f"{path}:1: invalid JSON", hint="one JSON object per line") from None
    if not has_text:
        return None, D.load_problems(path)
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = json.loads(line).get("text")
        except (json.JSONDecodeError, AttributeError):
            raise LmlabError(f"{path}:{n}: invalid JSON object", hint="one JSON object per line") from None
        if not isinstance(t, str) or not t:
            raise LmlabError(f"{path}:{n}: field 'text' must be a non-empty string")
        texts.append(t)
    return texts, None


@sub.command("make-data")
def make_data(
    out: Path = typer.Argument(..., help="Output JSON-lines file (NumProbe format)."),
    digits: str = typer.Option("2,3,4,5,6,7,8,9,10", "--digits"),
    per_digit: int = typer.Option(1000, "--per-digit"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate a fresh addition set (80/10/10 split per digit count)."""
    from .data import generate_problems, write_problems

    probs = generate_problems(_ints(digits, "--digits") or [], per_digit, seed)
    write_problems(probs, out)
    typer.echo(f"{len(probs)} problems -> {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="probe")
