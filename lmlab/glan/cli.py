"""`lmlab glan ...`: run the pipeline, build/show a taxonomy, Batch API export/import."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..core.errors import LmlabError


def _backend(backend: str, model: str, concurrency: int, batch_size: int, api_key: Optional[str]) -> Any:
    from ..core.backends import make_backend

    if backend == "local":
        return make_backend("local", model, batch_size=batch_size)
    return make_backend(backend, model, concurrency=concurrency, api_key=api_key)


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        no_args_is_help=True, help="GLAN: taxonomy -> subjects -> syllabus -> homework Q&A (arXiv:2402.13064)."
    )
    app.add_typer(sub, name="glan")

    @sub.command("run")
    def run(
        out: Path = typer.Option(
            Path("glan-out"), "--out", "-o", help="Run folder (holds the call cache: rerun to resume)."
        ),
        taxonomy: Optional[Path] = typer.Option(
            None, "--taxonomy", help="YAML field -> sub-field -> disciplines (default: built-in)."
        ),
        only: list[str] = typer.Option([], "--discipline", help="Restrict to these disciplines (repeatable)."),
        backend: str = typer.Option("local", "--backend", "-b", help="local | openai | http(s)://host/v1"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        subjects: int = typer.Option(3, "--subjects", help="Subjects kept per discipline."),
        samples: int = typer.Option(2, "--samples", help="Subject-list samples per discipline (merged, deduplicated)."),
        sessions: int = typer.Option(4, "--sessions", help="Max class sessions per syllabus."),
        questions: int = typer.Option(3, "--questions", help="Homework questions per subject."),
        temperature: float = typer.Option(0.7, "--temperature"),
        seed: int = typer.Option(0, "--seed"),
        concurrency: int = typer.Option(16, "--concurrency", help="In-flight HTTP requests."),
        batch_size: int = typer.Option(8, "--batch-size", help="Rows per batch on the local engine."),
        max_requests: Optional[int] = typer.Option(None, "--max-requests", help="Stop after this many new LLM calls."),
        max_tokens: Optional[int] = typer.Option(
            None, "--max-tokens", help="Stop after this many new prompt+completion tokens."
        ),
        decontaminate: list[Path] = typer.Option(
            [], "--decontaminate", help="Benchmark JSONL / CSV / TSV to decontaminate against (repeatable)."
        ),
        text_field: list[str] = typer.Option(
            [],
            "--text-field",
            help="Benchmark field/column holding the text (repeatable; default: question, prompt, ...).",
        ),
        language: list[str] = typer.Option(
            ["en"], "--language", help="Keep rows in these languages (ISO 639-1, repeatable)."
        ),
        ngram: int = typer.Option(10, "--ngram", help="Word n-gram length for decontamination."),
        export_batch: Optional[Path] = typer.Option(
            None, "--export-batch", help="Write the next stage's pending calls as Batch API JSONL instead of calling."
        ),
        retries: int = typer.Option(2, "--retries", help="Extra attempts for a reply that fails its schema."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LMLAB_API_KEY"),
    ) -> None:
        """Generate instruction data; resumable (rerun the same command), budgeted, deduplicated."""
        from .filters import default_filters
        from .pipeline import GlanConfig
        from .quality import BENCH_FIELDS
        from .run import glan_run
        from .taxonomy import DEFAULT_TAXONOMY, load_taxonomy

        discs = load_taxonomy(taxonomy or DEFAULT_TAXONOMY)
        if only:
            known = {d.name.casefold() for d in discs}
            bad = [o for o in only if o.casefold() not in known]
            if bad:
                raise LmlabError(f"--discipline {bad[0]!r} is not in the taxonomy", hint="see `lmlab glan taxonomy`")
            discs = [d for d in discs if d.name.casefold() in {o.casefold() for o in only}]
        if min(subjects, samples, sessions, questions) < 1 or retries < 0:
            raise LmlabError("--subjects, --samples, --sessions and --questions must be >= 1, --retries >= 0")
        cfg = GlanConfig(
            subjects_per_discipline=subjects,
            subject_samples=samples,
            max_sessions=sessions,
            questions_per_subject=questions,
            temperature=temperature,
            seed=seed,
        )
        be = _backend(backend, model, concurrency, batch_size, api_key)
        res = glan_run(
            out,
            discs,
            be,
            cfg,
            max_requests=max_requests,
            max_tokens=max_tokens,
            decontaminate=list(decontaminate),
            decontam_n=ngram,
            text_fields=tuple(text_field) or BENCH_FIELDS,
            filters=default_filters(language),
            export_to=export_batch,
            retries=retries,
        )
        from ..core.report import markdown_table

        typer.echo(
            markdown_table(
                res.stats["stages"],
                ["stage", "calls", "cached", "new", "invalid", "dropped", "prompt_tokens", "completion_tokens"],
            ),
            err=True,
        )
        if res.status == "complete":
            typer.echo(markdown_table(res.stats["disciplines"], floatfmt=".2f"), err=True)
            drops = [{"filter": k, "dropped": v} for k, v in res.stats["filters"].items()]
            typer.echo(markdown_table(drops), err=True)
        typer.echo(f"{res.status}: {res.message}")

    @sub.command("import-batch")
    def import_batch(
        results: Path = typer.Argument(..., help="Batch API output JSONL."),
        requests: Path = typer.Option(..., "--requests", help="The file written by `glan run --export-batch`."),
        out: Path = typer.Option(Path("glan-out"), "--out", "-o", help="Run folder whose cache receives the replies."),
    ) -> None:
        """Load Batch API results into a run's cache; rerun `lmlab glan run` to continue."""
        from ..core.llmcache import LLMCache
        from .batchapi import import_results

        if not results.exists():
            raise LmlabError(f"{results}: not found")
        cache = LLMCache(out / "calls.sqlite")
        counts = import_results(results, requests, cache)
        cache.close()
        typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))

    @sub.command("taxonomy")
    def taxonomy_cmd(
        file: Optional[Path] = typer.Option(None, "--file", help="Show this taxonomy (default: built-in)."),
        generate: list[str] = typer.Option(
            [], "--generate", help="Generate one for these fields (repeatable) with the model."
        ),
        out: Path = typer.Option(
            Path("taxonomy.yaml"), "--out", "-o", help="Where --generate writes the YAML to edit."
        ),
        backend: str = typer.Option("local", "--backend", "-b"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        cache: Path = typer.Option(Path("glan-out/calls.sqlite"), "--cache"),
    ) -> None:
        """Show a taxonomy, or generate one from top-level fields for you to review and edit."""
        from .taxonomy import DEFAULT_TAXONOMY, generate_taxonomy, load_taxonomy, save_taxonomy

        if generate:
            from ..core.llmcache import LLMCache
            from .pipeline import Caller

            c = LLMCache(cache)
            discs = generate_taxonomy(Caller(_backend(backend, model, 16, 8, None), c), list(generate))
            c.close()
            save_taxonomy(discs, out)
            typer.echo(
                f"{len(discs)} disciplines -> {out} (review and edit it, then `lmlab glan run --taxonomy {out}`)"
            )
            return
        for d in load_taxonomy(file or DEFAULT_TAXONOMY):
            typer.echo(f"{d.field} / {d.subfield} / {d.name}")
