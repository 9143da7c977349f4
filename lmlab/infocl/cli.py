"""`lmlab infocl run|reproduce|orders`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import LmlabError
from ..core.paths import atomic_write_text

app = typer.Typer(no_args_is_help=True, help="InfoCL: continual text classification (arXiv:2310.06362).")


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmlabError(f"{flag} {text!r}: not a comma-separated list of integers", hint="e.g. 0,1,2") from None


def _spec(benchmark: Optional[str], data: Optional[Path], tasks: Optional[int], cpt: Optional[int], files: str = ""):
    from dataclasses import replace

    from .data import file_spec, get_spec

    if (benchmark is None) == (data is None):
        raise LmlabError("give exactly one of --benchmark and --data", hint="e.g. --benchmark hwu64")
    if data is not None:
        if tasks is None or cpt is None:
            raise LmlabError("--data needs --tasks and --classes-per-task", hint="e.g. --tasks 5 --classes-per-task 4")
        return file_spec(data, tasks, cpt)
    spec = get_spec(benchmark)
    if files:
        missing = [f for f in files.split(",") if not Path(f).exists()]
        if missing:
            raise LmlabError(f"--files: {missing[0]} not found", hint="comma-separated paths of the benchmark's files")
        spec = replace(spec, path=files)
    if tasks or cpt:
        spec = replace(spec, num_tasks=tasks or spec.num_tasks, classes_per_task=cpt or spec.classes_per_task)
    return spec


@app.command()
def run(
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="hwu64 | clinc150 | fewrel16 | fewrel"),
    data: Optional[Path] = typer.Option(None, "--data", help=".jsonl/.csv/.tsv file of (text, label[, group]) rows"),
    files: str = typer.Option(
        "", "--files", help="The benchmark's own files elsewhere (fewrel: train_wiki.json,val_wiki.json for all 80)."
    ),
    tasks: Optional[int] = typer.Option(None, "--tasks", help="Number of tasks (required with --data)."),
    classes_per_task: Optional[int] = typer.Option(None, "--classes-per-task"),
    method: str = typer.Option(
        "infocl", "--method", "-m", help="finetune | joint | er[+kmeans+fscl+cpcl+adv] | derpp | infocl; +ncm"
    ),
    encoder: str = typer.Option("all-minilm-l6-v2", "--encoder", "-e", help="Any HF encoder dir or hub id."),
    orders: str = typer.Option("0,1,2", "--orders", help="Task orders (round r: seed 2021 + 100 r)."),
    train_layers: int = typer.Option(
        0, "--train-layers", help="Top encoder layers to train (0: heads on frozen features)."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs of both stages (default InfoCL's 12)."),
    max_len: int = typer.Option(64, "--max-len"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/infocl"), "--out", help="Checkpoints and per-order results (resumable)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all per-order results here."),
) -> None:
    """Run one method on one benchmark over several task orders; resumes from the last finished task."""
    from ..core.report import markdown_table
    from .methods import parse_method
    from .run import Setup, spec_hyper
    from .run import run as run_orders
    from .summary import summarize

    spec = _spec(benchmark, data, tasks, classes_per_task, files)
    m = parse_method(method)
    over = {"seed": seed} | ({"stage1_epochs": epochs, "stage2_epochs": epochs} if epochs else {})
    res = run_orders(spec, m, _ints(orders, "--orders"), out / spec.name.replace(":", "_"), Setup(encoder, train_layers, max_len),
                     spec_hyper(spec, **over), log=lambda s: typer.echo(s, err=True))  # fmt: skip
    typer.echo(markdown_table(summarize(res)))
    if json_path:
        atomic_write_text(json_path, json.dumps(res, indent=1))


@app.command()
def orders(
    benchmark: str = typer.Option(..., "--benchmark", "-b"),
    json_path: Optional[Path] = typer.Option(None, "--json"),
) -> None:
    """Print (or write) InfoCL's task orders of a benchmark: label names per task, per round."""
    from .data import build, get_spec

    spec = get_spec(benchmark)
    rows = []
    for r, seed in enumerate(spec.order_seeds):
        b = build(spec, r)
        rows.append({"round": r, "seed": seed, "tasks": [[b.labels[c] for c in t] for t in b.tasks]})
    text = json.dumps(rows, indent=1)
    if json_path:
        atomic_write_text(json_path, text)
    else:
        typer.echo(text)


@app.command()
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="3 orders, 2 epochs per stage, heads on frozen MiniLM."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    out: Path = typer.Option(Path("runs/infocl-reproduce"), "--out"),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Processes for the independent runs (default: one per core, at most 2)."
    ),
) -> None:
    """CLINC150 + HWU64, >= 3 task orders: fine-tune, ER, each InfoCL component, InfoCL, DER++, joint."""
    from ..core.report import ReproduceContext
    from .reproduce import run as reproduce_run

    out.mkdir(parents=True, exist_ok=True)
    if workers is not None and workers < 1:
        raise LmlabError(f"--workers {workers}: need at least 1", hint="e.g. --workers 2")
    sec = reproduce_run(ReproduceContext(out_dir=out, quick=quick), workers=workers)
    typer.echo(sec.markdown)
    for v in sec.verdicts:
        typer.echo(f"- {v.claim}: {v.measured} -> {v.status}")
    if json_path:
        atomic_write_text(json_path, json.dumps(sec.data, indent=1, default=str))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="infocl")
