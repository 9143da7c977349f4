"""`lmlab moe reproduce` and `lmlab moe bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import LmlabError
from ..core.paths import atomic_write_text

app = typer.Typer(no_args_is_help=True, help="DeepSeekMoE: fine-grained + shared experts (arXiv:2401.06066).")


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmlabError(
            f"--seeds {text!r}: not a comma-separated list of integers", hint="e.g. --seeds 0,1,2"
        ) from None


@app.command()
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="Small models, 300 steps (minutes on a laptop CPU)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results here (updated after every run)."),
    data: Optional[str] = typer.Option(
        None, "--data", help=".txt/.jsonl file, directory, or hf:NAME (default: Python stdlib)."
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds (>= 3 for mean ± std)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the number of training steps."),
    no_ladder: bool = typer.Option(False, "--no-ladder", help="Skip the shared/fine-grained ablation ladder."),
    archs: Optional[str] = typer.Option(
        None, "--archs", help="Comma-separated subset of dense,switch,gshard,deepseekmoe (default: all four)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (the full setup wants a GPU)."),
) -> None:
    """Train Dense, Switch, GShard and DeepSeekMoE from scratch on the same data and compare (Table 1, Fig. 3-5)."""
    from ..core.report import markdown_table
    from .experiment import FULL, QUICK, run_all, summarize, with_overrides
    from .stats import paired

    if steps is not None and steps < 1:
        raise LmlabError(f"--steps {steps}: must be >= 1")
    s = with_overrides(
        QUICK if quick else FULL,
        data=data,
        steps=steps,
        seeds=_seeds(seeds),
        ladder=not no_ladder,
        archs=[a.strip() for a in archs.split(",") if a.strip()] if archs else None,
    )
    save = (lambda r: atomic_write_text(json_path, json.dumps(r, indent=1))) if json_path else None
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise LmlabError(
            f"--device {device!r}: not usable ({str(e).splitlines()[0]})", hint="use cpu or an available cuda device"
        ) from None
    res = run_all(s, log=lambda m: typer.echo(m, err=True), save=save, device=device)
    typer.echo(markdown_table(summarize(res["runs"]), floatfmt=".4f"))
    pairs = [
        (b, w)
        for b, w in [("gshard", "dense"), ("switch", "dense"), ("deepseekmoe", "gshard")]
        if b in s.archs and w in s.archs
    ]
    typer.echo(
        markdown_table(
            [
                {
                    "comparison": f"{p['worse']} - {p['better']}",
                    "seeds": len(p["seeds"]),
                    "mean": p["mean"],
                    "ci95_lo": p["lo"],
                    "ci95_hi": p["hi"],
                }
                for p in (paired(res["runs"], b, w) for b, w in pairs)
            ],
            floatfmt=".4f",
        )
    )
    typer.echo(
        markdown_table(res["ablation"], ["arch", "val_loss", "total_params", "activated_params"], floatfmt=".4f")
    )
    typer.echo(json.dumps(res["specialization"], indent=1))


@app.command()
def bench(
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the rows here."),
    tokens: list[int] = typer.Option([256, 1024, 4096], "--tokens", help="Token counts (repeatable)."),
    repeats: int = typer.Option(3, "--repeats"),
    threads: int = typer.Option(1, "--threads", help="torch threads per measurement (1: robust on a shared machine)."),
) -> None:
    """Forward+backward tokens/s and peak memory: our layer vs transformers' DeepseekV2Moe (every CPU experts impl)."""
    from .bench import run_bench

    if repeats < 1 or threads < 1 or any(t < 1 for t in tokens):
        raise LmlabError("--repeats, --threads and --tokens must be >= 1")
    run_bench(tokens, repeats, json_path, threads)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="moe")
