"""`lmlab wicl ...`: weighted in-context learning (arXiv:2310.08309) on any task file and any causal LM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lmlab.core.errors import LmlabError

sub = typer.Typer(
    no_args_is_help=True, help="Weighted in-context learning: MSP, weight search, SKM/SAW (arXiv:2310.08309)."
)


def _ints(text: Optional[str], what: str) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LmlabError(f"{what} {text!r}: expected comma-separated integers", hint="e.g. 0,1,2 or 0-9") from None


def _seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        a, b = text.split("-", 1)
        try:
            return list(range(int(a), int(b) + 1))
        except ValueError:
            raise LmlabError(f"--seeds {text!r}: expected N, A-B or a comma list") from None
    if text.isdigit():
        return list(range(int(text)))
    return _ints(text, "--seeds") or []


def _task(
    task: Optional[str],
    data: Optional[Path],
    template: Optional[str],
    labels: Optional[str],
    label_words: Optional[str],
    test: Optional[Path],
    data_dir: Optional[Path],
    label_field: str = "label",
):
    from .tasks import load_task, load_user_task

    if (task is None) == (data is None):
        raise LmlabError("give exactly one of --task NAME or --data FILE")
    if task:
        return load_task(task, data_dir)
    kw = {}
    if template:
        inp, _, ans = template.partition("|||")
        kw["template"] = inp
        if ans:
            kw["answer"] = ans
    return load_user_task(
        data,
        labels=labels.split(",") if labels else None,
        label_words=label_words.split(",") if label_words else None,
        test_path=test,
        label_field=label_field,
        **kw,
    )


@sub.command()
def run(
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help="sst2 | rte | agnews | trec | dbpedia | mr | cr | subj"
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Your JSONL/CSV/TSV file with the template's fields and a label column."
    ),
    template: Optional[str] = typer.Option(
        None,
        "--template",
        help="With --data: 'Input: {text} Label:' (optionally '|||' then the answer template, default ' {answer}').",
    ),
    labels: Optional[str] = typer.Option(None, "--labels", help="With --data: label values in order, comma-separated."),
    label_words: Optional[str] = typer.Option(None, "--label-words", help="With --data: the words scored for them."),
    label_field: str = typer.Option("label", "--label-field", help="With --data: the label column."),
    test: Optional[Path] = typer.Option(
        None, "--test", help="With --data: a separate test file (default: a seeded 20% split)."
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder holding <task>/ (default ../shared/data/wicl)."
    ),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Alias, checkpoint dir, .gguf or hub id."),
    backend: str = typer.Option("native", "--backend", help="native (Llama family) | transformers (any causal LM)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    shots: int = typer.Option(8, "--shots", "-k"),
    seeds: str = typer.Option("10", "--seeds", help="N (0..N-1), A-B, or a comma list."),
    placement: list[str] = typer.Option(["skm"], "--placement", help="skm | saw | both (repeatable)."),
    indicator: str = typer.Option(
        "msp", "--indicator", help="msp (paper, span masked) | msp_last (released code) | validate."
    ),
    beam: int = typer.Option(1, "--beam"),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Search all of space^k (the oracle; small k only)."),
    space: str = typer.Option("0.9,1.0,1.1", "--space", help="Weight values."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers that get weights (default all)."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Query heads that get weights (default all)."),
    eval_n: int = typer.Option(300, "--eval-n", help="Evaluation items (0 = all)."),
    val_n: int = typer.Option(32, "--val-n", help="Held-out items for the validation indicator."),
    balanced: bool = typer.Option(False, "--balanced", help="Class-balanced demonstrations."),
    label_mode: str = typer.Option("sum", "--label-mode", help="sum (multi-token words) | first (official) | single."),
    corr_vectors: int = typer.Option(0, "--corr-vectors", help="Also rank N random weight vectors by each indicator."),
    batch_rows: int = typer.Option(64, "--batch-rows"),
    out: Path = typer.Option(Path("wicl_runs.jsonl"), "--out", "-o", help="JSON lines, one per seed (resumable)."),
) -> None:
    """ICL vs WICL per seed: demonstrations, uniform accuracy, searched weights and their accuracy (JSON lines)."""
    from .experiment import RunConfig, load_lm, paired_summary, run_task

    try:
        sp = tuple(float(x) for x in space.split(","))
    except ValueError:
        raise LmlabError(f"--space {space!r}: expected comma-separated numbers") from None
    t = _task(task, data, template, labels, label_words, test, data_dir, label_field)
    cfg = RunConfig(
        shots=shots,
        seeds=_seeds(seeds),
        placements=list(placement),
        indicator=indicator,
        beam=beam,
        exhaustive=exhaustive,
        space=sp,
        eval_n=eval_n or None,
        val_n=val_n,
        balanced=balanced,
        layers=_ints(layers, "--layers"),
        heads=_ints(heads, "--heads"),
        label_mode=label_mode,
        batch_rows=batch_rows,
        corr_vectors=corr_vectors,
    )
    from .icl import label_ids

    lm = load_lm(model, backend, device, dtype)
    label_ids(lm.tokenizer, t.template, label_mode)  # fail fast on label words
    rows = run_task(lm, t, cfg, out, log=lambda m: typer.echo(m, err=True))
    for p in cfg.placements:
        typer.echo(json.dumps({"task": t.name, "placement": p, **paired_summary(rows, p)}))


@sub.command()
def search(
    task: Optional[str] = typer.Option(None, "--task", "-t"),
    data: Optional[Path] = typer.Option(None, "--data"),
    template: Optional[str] = typer.Option(None, "--template"),
    labels: Optional[str] = typer.Option(None, "--labels"),
    label_words: Optional[str] = typer.Option(None, "--label-words"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    backend: str = typer.Option("native", "--backend"),
    shots: int = typer.Option(8, "--shots", "-k"),
    seed: int = typer.Option(0, "--seed"),
    placement: str = typer.Option("skm", "--placement"),
    indicator: str = typer.Option("msp", "--indicator"),
    beam: int = typer.Option(1, "--beam"),
    exhaustive: bool = typer.Option(False, "--exhaustive"),
    balanced: bool = typer.Option(False, "--balanced"),
) -> None:
    """Search the demonstration weights for one seed's demonstrations; prints them as JSON (no evaluation)."""
    from .experiment import RunConfig, _indicator, load_lm
    from .icl import Scorer, build_prompt
    from .search import beam_search, exhaustive_search
    from .tasks import sample_demos, validation_pool

    t = _task(task, data, template, labels, label_words, None, None)
    cfg = RunConfig(shots=shots, seeds=[seed], placements=[placement], indicator=indicator, beam=beam)
    lm = load_lm(model, backend)
    val_idx = validation_pool(t.train, cfg.val_n)
    idx = sample_demos(t.train, shots, seed, balanced, exclude=set(val_idx))
    sc = Scorer(lm, t.template, build_prompt(lm.tokenizer, t.template, [t.train[i] for i in idx]), placement)
    score = _indicator(sc, cfg, [t.train[i] for i in val_idx])
    res = exhaustive_search(score, sc.k) if exhaustive else beam_search(score, sc.k, beam=beam)
    typer.echo(
        json.dumps(
            {
                "task": t.name,
                "seed": seed,
                "demos": idx,
                "placement": placement,
                "indicator": indicator,
                "weights": res.weights,
                "score": res.score,
                "evaluations": res.evaluations,
            }
        )
    )


@sub.command()
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="Minutes-scale subset."),
    json_path: Path = typer.Option(Path("wicl_reproduce.json"), "--json", help="Write the results here."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    out_dir: Path = typer.Option(Path("runs/wicl"), "--out-dir", help="Per-seed JSON lines (resumable) go here."),
    report_only: bool = typer.Option(False, "--report-only", help="Report the seeds cached in --out-dir; run none."),
) -> None:
    """The paper's claims at SmolLM2-135M scale: ICL vs WICL (SKM, SAW) per task, and MSP vs accuracy."""
    from .reproduce import reproduce as rep

    res = rep(quick=quick, model=model, out_dir=out_dir, log=lambda m: typer.echo(m, err=True), compute=not report_only)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    from lmlab.core.paths import atomic_write_text

    atomic_write_text(json_path, json.dumps(res, indent=2))
    typer.echo(res["markdown"])


@sub.command()
def bench(
    json_path: Path = typer.Option(Path("benchmarks/results/wicl_bench.json"), "--json"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    task: str = typer.Option("sst2", "--task"),
    shots: list[int] = typer.Option([8, 16], "--shots", help="Repeatable."),
    queries: int = typer.Option(8, "--queries", help="Queries per candidate (MSP scores the k=8 demonstrations)."),
    candidates: int = typer.Option(17, "--candidates", help="17 = the distinct vectors of one beam-1 search at k=8."),
) -> None:
    """Shared demonstration cache + candidates as rows vs recomputing the prompt per candidate (same run)."""
    from .bench import run_bench

    run_bench(json_path, model, task, shots, queries, candidates, echo=typer.echo)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="wicl")
