"""The `lmlab` command. Core commands live here; each system adds its group via `lmlab.<system>.cli.register`."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from . import SYSTEMS
from .core.errors import LmlabError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="lmlab: ten LLM research systems on one fast native engine. Offline by default.",
)
bench_app = typer.Typer(
    no_args_is_help=True, help="Speed and memory benchmarks (ratios against a baseline run alongside)."
)
app.add_typer(bench_app, name="bench")


def _system_module(system: str, part: str):
    """Import lmlab.<system>.<part> if that system has landed; None otherwise."""
    name = f"lmlab.{system}.{part}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name in (name, f"lmlab.{system}"):
            return None
        raise


QUANT_OPTION = typer.Option(
    None,
    "--quant",
    help="Weight-only, faster decoding, not bit-equal to the float model. int8: per-channel int8 projections; "
    "bf16: bf16 weights, fp32 activations; q8 / q4: GGUF Q8_0 / Q4_1 groups of 32 (q4 keeps the LM head at Q8_0; "
    "the embedded SmolLM2 file's own codes), fp32 activations, fast where lmlab's CPU kernels run.",
)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="Prompt text (sent through the chat template unless --raw)."),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Alias, checkpoint dir, .gguf file or hub id."
    ),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t"),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16"),
    speculative: Optional[str] = typer.Option(
        None,
        "--speculative",
        help="sps | pld | eagle | eagle_pld | selfq4: speculative decoding. Sampling keeps the model's distribution on "
        "every path; greedy output is identical to plain decoding where the verification pass is batch-invariant "
        "(fp32 through lmlab's CPU kernels). Elsewhere (bf16, CUDA, LMLAB_KERNELS=0) a k-token pass sums in another "
        "order than a 1-token step, so a near-tied greedy choice can differ. A method this machine cannot run is "
        "skipped with a warning (plain decoding).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    quant: Optional[str] = QUANT_OPTION,
) -> None:
    """Generate a completion and stream it to stdout."""
    from .core.backends import LocalBackend
    from .core.engine import SamplingParams

    be = LocalBackend(model, dtype=dtype, device=device, speculative=speculative, quant=quant)
    params = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=list(stop)
    )
    for delta in be.stream(prompt if raw else [{"role": "user", "content": prompt}], params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def chat(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.7, "--temperature", "-t"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    quant: Optional[str] = QUANT_OPTION,
) -> None:
    """Interactive chat on stdin/stdout (empty line or Ctrl-D ends; /reset clears the history)."""
    from .core.backends import LocalBackend
    from .core.engine import SamplingParams

    be = LocalBackend(model, device=device, quant=quant)
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            history = list(base)
            continue
        history.append({"role": "user", "content": line})
        reply = ""
        for delta in be.stream(history, params):
            reply += delta
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})


@app.command()
def models() -> None:
    """List model aliases and where converted checkpoints are cached."""
    from .core.loader import ALIASES, DEFAULT_MODEL, _import_system_aliases, _smollm2_gguf
    from .core.paths import cache_dir

    _import_system_aliases()
    root = cache_dir("models")
    typer.echo(f"cache: {root}")
    for name, locate in sorted(ALIASES.items()):
        if name == DEFAULT_MODEL:  # embedded GGUF, converted on first use
            cached = (root / name / "config.json").exists()
            try:
                src = f"{'converted' if cached else 'not converted yet'}; from {_smollm2_gguf()}"
            except LmlabError as e:
                src = f"unavailable: {e}"
        else:  # trained by lmlab on first use (resolving it here could start training)
            src = f"trained by lmlab.{locate.__module__.split('.')[1]} on first use, then cached"
        typer.echo(f"{name:36s} {src}")


@bench_app.command("decode")
def bench_decode(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    batches: list[int] = typer.Option([1, 8], "--batch", help="Batch sizes (repeatable)."),
    new_tokens: int = typer.Option(128, "--new-tokens"),
    repeats: int = typer.Option(2, "--repeats"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the rows here."),
) -> None:
    """New tokens/s of the native engine vs transformers' generate, same model, prompts and settings."""
    from .core.bench import run_decode_bench

    run_decode_bench(model, batches, new_tokens, repeats, json_path)


@app.command()
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="Minutes-scale run on embedded defaults."),
    only: list[str] = typer.Option([], "--only", help="Run only this system (repeatable)."),
    out: Path = typer.Option(Path("runs"), "--out", help="Parent folder of the run directory."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run each system's reproduction and write runs/<timestamp>/report.md and report.html."""
    from .core.report import ReproduceContext, Section, write_report

    unknown = [s for s in only if s not in ("core", *SYSTEMS)]
    if unknown:
        raise LmlabError(f"--only {unknown[0]!r}: unknown system", hint=f"choose from core, {', '.join(SYSTEMS)}")
    run_dir = out / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    for system in ("core", *SYSTEMS):
        if only and system not in only:
            continue
        mod = _system_module(system, "reproduce")
        if mod is None:
            continue
        typer.echo(f"[{system}] reproducing ...", err=True)
        t0 = time.time()
        ctx = ReproduceContext(out_dir=run_dir / system, quick=quick, seed=seed)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            sec = mod.run(ctx)
        except Exception as e:  # one failing system, whatever the error, must not sink the others' sections
            logging.getLogger("lmlab").exception("%s failed", system)
            sec = Section(system, system, "", error=f"{type(e).__name__}: {e}")
        sec.seconds = time.time() - t0
        sections.append(sec)
        write_report(run_dir, sections)  # after every system: an interrupted run keeps what it finished
        typer.echo(f"[{system}] done in {sec.seconds:.0f} s", err=True)
    md, html = write_report(run_dir, sections, header=f"quick={quick} seed={seed}")
    typer.echo(f"report: {md}\n        {html}")
    if any(s.error for s in sections):
        raise typer.Exit(1)


for _system in SYSTEMS:  # each landed system adds its own command group
    _mod = _system_module(_system, "cli")
    if _mod is not None:
        _mod.register(app)
_serve = _system_module("core", "serve")  # `lmlab serve`, the OpenAI-compatible server
if _serve is not None:
    _serve.register(app)


def main() -> None:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130 without a traceback."""
    logging.basicConfig(level=os.environ.get("LMLAB_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except LmlabError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
