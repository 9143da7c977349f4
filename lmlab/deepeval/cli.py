"""`lmlab deepeval run|score|baselines|reproduce|bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..core.errors import LmlabError

ALL = ["description", "title", "deep_semantics"]


def _templates(spec: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in spec.split(","))
    except ValueError:
        raise LmlabError(f"--templates {spec!r}: expected a comma list such as 1,2,3") from None
    if not ks or any(k not in (1, 2, 3) for k in ks):
        raise LmlabError(f"--templates {spec!r}: templates are 1, 2 and 3 (upstream's Prompt_1..3)")
    return ks


def make_judge(model: str, backend: str = "local") -> Any:
    """An LLM choice extractor: greedy on the first attempt, sampled (seeded) on the retries."""
    from ..core.backends import make_backend
    from ..core.engine import SamplingParams

    be = make_backend(backend, model)

    def judge(prompt: str, attempt: int) -> str:
        p = SamplingParams(max_new_tokens=4, temperature=0.0 if attempt == 0 else 0.7, seed=attempt)
        return be.complete([[{"role": "user", "content": prompt}]], p)[0].text

    return judge


def _print_tables(records: list[dict], categories: Optional[Path] = None) -> dict:
    from ..core.report import markdown_table
    from .run import load_categories, summarize

    tables = summarize(records, load_categories(categories) if categories else None)
    for name, rows in tables.items():
        if rows:
            typer.echo(f"\n{name}\n" + markdown_table(rows, floatfmt=".1f"))
    return tables


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        no_args_is_help=True,
        help="DeepEval: deep semantics behind images, multiple choice, honest scoring (arXiv:2402.11281).",
    )
    app.add_typer(sub, name="deepeval")

    @sub.command("run")
    def run(
        out: Path = typer.Option(
            Path("deepeval-predictions.jsonl"), "--out", "-o", help="Predictions JSONL (rerun to resume)."
        ),
        subtask: list[str] = typer.Option(
            ALL, "--subtask", "-s", help="description | title | deep_semantics (repeatable)."
        ),
        data: Optional[Path] = typer.Option(
            None, "--data", help="Folder with the release's files (default: shared copy)."
        ),
        backend: str = typer.Option("local", "--backend", "-b", help="local | hf | openai | http(s)://host/v1"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        mode: str = typer.Option("generate", "--mode", help="generate (then extract) | loglik (native engine only)."),
        condition: str = typer.Option(
            "none", "--condition", help="none | oracle (human description) | self (model describes first)."
        ),
        templates: str = typer.Option("1,2,3", "--templates", help="Prompt variants, e.g. 1,2,3."),
        circular: bool = typer.Option(False, "--circular", help="CircularEval: all 4 rotations of the options."),
        official_whitespace: bool = typer.Option(
            False, "--official-whitespace", help="Keep upstream's option bytes (spaces that give answers away)."
        ),
        limit: Optional[int] = typer.Option(
            None, "--limit", "-n", help="A seeded random subset of N items per subtask."
        ),
        images: Optional[Path] = typer.Option(None, "--images", help="Folder of <Image_ID>.<ext> files."),
        download: bool = typer.Option(
            False, "--download", help="Fetch images by URL into the content-addressed cache."
        ),
        vision: bool = typer.Option(
            False, "--vision", help="Send images to an HTTP backend (OpenAI-style vision chat)."
        ),
        max_new_tokens: int = typer.Option(48, "--max-new-tokens"),
        temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (deterministic, the default)."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("cpu", "--device"),
        batch_size: int = typer.Option(8, "--batch-size"),
        retries: int = typer.Option(4, "--retries", help="HTTP retries with backoff."),
        judge: Optional[str] = typer.Option(None, "--judge", help="Local model used as the LLM choice extractor."),
        judge_retries: int = typer.Option(2, "--judge-retries"),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LMLAB_API_KEY"),
    ) -> None:
        """Answer the questions and store scored predictions (resumable, per-item provenance)."""
        from .backends import make_answerer
        from .data import canonical_subtask, load_subtask, subset
        from .images import ImageSource
        from .run import RunConfig, run_generate, run_loglik
        from .store import PredictionStore

        if mode not in ("generate", "loglik"):
            raise LmlabError(f"unknown --mode {mode!r}", hint="use generate or loglik")
        subs = [canonical_subtask(s) for s in subtask]
        cfg = RunConfig(
            templates=_templates(templates), rotations=4 if circular else 1, official_whitespace=official_whitespace,
            condition=condition, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            batch_size=batch_size, judge_retries=judge_retries,
        )  # fmt: skip
        store = PredictionStore(out)
        src = ImageSource(images, download) if (images or download) else None
        if mode == "loglik":
            if backend != "local":
                raise LmlabError("--mode loglik needs the native engine", hint="use --backend local")
            import torch

            from ..core.loader import load_model
            from .loglik import LoglikScorer

            scorer = LoglikScorer(load_model(model, dtype=torch.float32, device=device))
        else:
            answerer = make_answerer(backend, model, vision=vision, device=device, api_key=api_key, retries=retries)
        jd = make_judge(judge) if judge else None
        for st in subs:
            items = subset(load_subtask(st, data), limit, seed)
            if mode == "loglik":
                n = run_loglik(items, scorer, store, cfg, model)
            else:
                n = run_generate(items, answerer, store, cfg, src, jd)
            typer.echo(f"{st}: {n} new predictions ({len(store)} in {out})")
        if src is not None and src.missing:
            rep = out.with_suffix(".missing-images.jsonl")
            rep.write_text("".join(json.dumps({"Image_ID": k, "reason": v}) + "\n" for k, v in src.missing.items()))
            typer.echo(f"{len(src.missing)} items skipped without an image: see {rep}")
        _print_tables(list(store.records.values()))

    @sub.command("score")
    def score(
        predictions: Path = typer.Argument(..., help="Predictions JSONL written by `deepeval run`."),
        judge: Optional[str] = typer.Option(None, "--judge", help="Re-extract with this local LLM judge."),
        judge_retries: int = typer.Option(2, "--judge-retries"),
        categories: Optional[Path] = typer.Option(
            None, "--categories", help="Image_ID -> category (JSON, JSONL or CSV)."
        ),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the tables as JSON."),
    ) -> None:
        """Re-score stored outputs with every extractor: per template, mean +- std, circular, disagreement."""
        from ..core.paths import atomic_write_text
        from .run import rescore
        from .store import PredictionStore

        if not predictions.is_file():
            raise LmlabError(f"{predictions}: no such file", hint="pass the JSONL written by `lmlab deepeval run -o`")
        store = PredictionStore(predictions)
        if not len(store):
            raise LmlabError(f"{predictions}: no predictions", hint="run `lmlab deepeval run` first")
        recs = rescore(list(store.records.values()), make_judge(judge) if judge else None, judge_retries)
        tables = _print_tables(recs, categories)
        if json_out:
            atomic_write_text(json_out, json.dumps(tables, indent=2))

    @sub.command("baselines")
    def baselines(
        data: Optional[Path] = typer.Option(None, "--data", help="Folder with the release's files."),
        subtask: list[str] = typer.Option(ALL, "--subtask", "-s"),
        json_out: Optional[Path] = typer.Option(None, "--json"),
    ) -> None:
        """Blind baselines (no image, no model): chance, shortest, longest, only unpadded, least similar."""
        from ..core.paths import atomic_write_text
        from ..core.report import markdown_table
        from .baselines import blind_baselines
        from .data import canonical_subtask, load_subtask

        rows = []
        for st in subtask:
            st = canonical_subtask(st)
            rows += [{"subtask": st, **r} for r in blind_baselines(load_subtask(st, data))]
        typer.echo(markdown_table(rows, floatfmt=".1f"))
        if json_out:
            atomic_write_text(json_out, json.dumps(rows, indent=2))

    @sub.command("reproduce")
    def reproduce(
        quick: bool = typer.Option(False, "--quick", help="Small subsets (<= 5 minutes on a laptop CPU)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the measured data as JSON."),
        out_dir: Path = typer.Option(Path("runs/deepeval"), "--out-dir"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """The text-only proxy of the paper's claims on the embedded models (report section + JSON)."""
        from ..core.paths import atomic_write_text
        from ..core.report import ReproduceContext, section_markdown
        from .reproduce import run as run_repro

        out_dir.mkdir(parents=True, exist_ok=True)
        s = run_repro(ReproduceContext(out_dir=out_dir, quick=quick, seed=seed))
        md = section_markdown(s, out_dir)
        atomic_write_text(out_dir / "deepeval.md", md)
        typer.echo(md)
        if json_out:
            verdicts = [v.__dict__ for v in s.verdicts]
            atomic_write_text(json_out, json.dumps({"data": s.data, "verdicts": verdicts}, indent=2, default=str))

    @sub.command("bench")
    def bench(
        n: int = typer.Option(8, "--n", help="Items per subtask."),
        repeats: int = typer.Option(3, "--repeats"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        json_out: Optional[Path] = typer.Option(None, "--json"),
        conditions: str = typer.Option("none,oracle", "--conditions", help="none (options only), oracle, or both."),
    ) -> None:
        """Shared-prefix vs separate-prompt log-likelihood scoring: items/s and the ratio, same run."""
        from .bench import bench_table, run_bench

        conds = tuple(c.strip() for c in conditions.split(",") if c.strip())
        if not conds or set(conds) - {"none", "oracle"}:
            raise LmlabError(f"--conditions {conditions!r}: expected none, oracle or none,oracle")
        out = run_bench(model, n=n, repeats=repeats, json_path=json_out, conditions=conds)
        typer.echo(bench_table(out))
        load = f"{' '.join(out['loadavg_start'])} at start, {' '.join(out['loadavg'])} at end"
        typer.echo(f"torch threads {out['torch_threads']}, load average {load}")
