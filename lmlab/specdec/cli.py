"""`lmlab specdec train-draft | train-head | bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _cfg(quick: bool, steps: Optional[int], prompts: Optional[int], self_prompts: Optional[int], **head):
    from .train import DraftTrainConfig

    cfg = DraftTrainConfig.quick() if quick else DraftTrainConfig()
    for k, v in head.items():
        if v is not None:
            setattr(cfg, k, v)
    if steps:
        cfg.steps = steps
    if prompts:
        cfg.prompts = prompts
    if self_prompts is not None:
        cfg.self_prompts = self_prompts
    return cfg


def _train(
    kind: str,
    target: str,
    quick: bool,
    steps: Optional[int],
    prompts: Optional[int],
    self_prompts: Optional[int],
    out: Optional[Path],
    dtype: str,
    **head,
) -> None:
    from ..core.loader import load_model
    from .registry import trained_path
    from .train import train_draft_lm, train_eagle_head

    lm = load_model(target, dtype=dtype)  # the corpus is the target's own output in the dtype it will run in
    cfg = _cfg(quick, steps, prompts, self_prompts, **head)
    dest = out or trained_path(lm, kind, cfg)
    fn = train_draft_lm if kind == "draft" else train_eagle_head
    path = fn(
        lm,
        cfg,
        dest,
        log_fn=lambda r: typer.echo(
            f"step {r['step']:4d} loss {r['loss']:.4f} top1 {r.get('top1', 0):.3f} ({r['seconds']:.0f} s)", err=True
        ),
    )
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    sub = typer.Typer(no_args_is_help=True, help="Speculative decoding: train drafts, benchmark (Spec-Bench style).")

    @sub.command("train-draft")
    def train_draft(
        target: str = typer.Option(
            "smollm2-135m-instruct", "--target", "-m", help="Target model (alias, dir, .gguf, hub id)."
        ),
        quick: bool = typer.Option(False, "--quick", help="Minutes-scale corpus and steps."),
        steps: Optional[int] = typer.Option(None, "--steps"),
        prompts: Optional[int] = typer.Option(
            None, "--prompts", help="Held-out Spec-Bench / GSM8K questions the target answers."
        ),
        self_prompts: Optional[int] = typer.Option(
            None, "--self-prompts", help="Extra requests the target writes itself (Magpie)."
        ),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Checkpoint dir (default: the cache, where --speculative sps finds it)."
        ),
        dtype: str = typer.Option(
            "auto",
            "--dtype",
            help="Target dtype: auto (fp32 where lmlab's CPU kernels run, else bf16 where native), float32, bfloat16.",
        ),
    ) -> None:
        """Distil a small same-tokenizer draft LM from the target's own generations (an ordinary HF checkpoint)."""
        _train("draft", target, quick, steps, prompts, self_prompts, out, dtype)

    @sub.command("train-head")
    def train_head(
        target: str = typer.Option("smollm2-135m-instruct", "--target", "-m"),
        quick: bool = typer.Option(False, "--quick"),
        steps: Optional[int] = typer.Option(None, "--steps"),
        prompts: Optional[int] = typer.Option(None, "--prompts"),
        self_prompts: Optional[int] = typer.Option(None, "--self-prompts"),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Head folder (default: the cache, where --speculative eagle finds it)."
        ),
        dtype: str = typer.Option(
            "auto",
            "--dtype",
            help="Target dtype: auto (fp32 where lmlab's CPU kernels run, else bf16 where native), float32, bfloat16.",
        ),
        head_layers: Optional[int] = typer.Option(None, "--head-layers", help="Decoder layers in the head (EAGLE: 1)."),
        feature_layers: Optional[str] = typer.Option(
            None,
            "--feature-layers",
            help="Target hidden states the head reads, e.g. 2,15,30 (EAGLE-3 fusion; default: the final one).",
        ),
    ) -> None:
        """Train the EAGLE-style feature head on the target's generations (target frozen)."""
        fl = None
        if feature_layers:
            try:
                fl = tuple(int(x) for x in feature_layers.split(","))
            except ValueError:
                from ..core.errors import LmlabError

                raise LmlabError(
                    f"--feature-layers {feature_layers!r}: not a list of hidden-state indexes",
                    hint="e.g. --feature-layers 2,15,30",
                ) from None
        _train(
            "eagle", target, quick, steps, prompts, self_prompts, out, dtype, head_layers=head_layers, feature_layers=fl
        )

    @sub.command("bench")
    def bench(
        prompts: Optional[Path] = typer.Option(
            None, "--prompts", help="Spec-Bench question.jsonl (default ../shared/data/spec_bench)."
        ),
        limit_per_category: int = typer.Option(
            2, "--limit-per-category", help="First N questions of each category (0: all)."
        ),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
        target: str = typer.Option("smollm2-135m-instruct", "--target", "-m"),
        methods: str = typer.Option(
            ",".join(
                (
                    "ar",
                    "sps",
                    "pld",
                    "eagle",
                    "eagle_pld",
                    "selfq4",
                    "layerskip",
                    "hf_ar",
                    "hf_assisted",
                    "hf_prompt_lookup",
                )
            ),
            "--methods",
        ),
        json_path: Optional[Path] = typer.Option(
            None, "--json", help="Write the summary JSON here (rows go to PATH.rows.jsonl)."
        ),
        categories: str = typer.Option("", "--categories", help="Comma-separated subset of categories (default: all)."),
        dtype: str = typer.Option(
            "float32",
            "--dtype",
            help="Target dtype for every method. bf16 is faster but not token-identical on CPU (see RESULTS.md).",
        ),
    ) -> None:
        """Greedy Spec-Bench run: speedups, accepted tokens, acceptance, cost ratio c, predicted speedup, losslessness."""
        from .bench import run_bench, table

        res = run_bench(
            target,
            prompts,
            limit_per_category or None,
            max_new_tokens,
            tuple(methods.split(",")),
            json_path,
            tuple(c for c in categories.split(",") if c),
            log=lambda s: typer.echo(s, err=True),
            dtype=dtype,
        )
        typer.echo(table(res))

    app.add_typer(sub, name="specdec")
