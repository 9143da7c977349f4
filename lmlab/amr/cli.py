"""`lmlab amr ...`: parse, train, eval, linearize, reproduce, bench."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from lmlab.core.errors import LmlabError

sub = typer.Typer(no_args_is_help=True, help="AMR parsing with reverse graph linearization (arXiv:2310.08860).")


def _sentences(path: Path) -> list[str]:
    """Sentences from a text file (one per line) or from the `# ::snt` lines of an AMR file."""
    if not path.is_file():
        raise LmlabError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if "# ::snt" in text:
        from .graphs import read_amr

        return [g.sentence for g in read_amr(path)]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise LmlabError(f"{path}: no sentences", hint="one sentence per line")
    return lines


@sub.command()
def parse(
    input: Path = typer.Argument(..., help="Sentences, one per line (or an AMR file: its ::snt lines)."),
    model: Path = typer.Option(..., "--model", "-m", help="A parser checkpoint dir (from `lmlab amr train`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Write the AMR file here."),
    beam: int = typer.Option(5, "--beam"),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Max generated tokens (default 4 x input + 32)."),
) -> None:
    """Sentences in, AMR graphs out (never empty: repairs are written as `# ::status`)."""
    from .graphs import write_amr
    from .parser import Parser

    sents = _sentences(input)
    parser = Parser.load(model)
    t0 = time.perf_counter()
    graphs = parser.parse(sents, beam=beam, batch_size=batch_size, max_len=max_len)
    secs = time.perf_counter() - t0
    write_amr(output, graphs)
    repaired = sum(bool(g.status) for g in graphs)
    typer.echo(f"{len(graphs)} graphs -> {output} ({len(graphs) / secs:.1f} sentences/s, {repaired} repaired)")


@sub.command()
def train(
    train_file: Path = typer.Argument(..., help="Training AMR file (PENMAN blocks with # ::snt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint dir to write."),
    order: str = typer.Option("nlr", "--order", help="nlr (default order), nrl (reverse), or rgl (two-pass)."),
    steps: int = typer.Option(1200, "--steps"),
    d_model: int = typer.Option(128, "--d-model"),
    layers: int = typer.Option(3, "--layers"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    vocab_size: int = typer.Option(1500, "--vocab-size"),
    tokenizer: str = typer.Option(
        "bpe",
        "--tokenizer",
        help="bpe: byte-level BPE + AMR tokens (AMRBART-style); word: one vocabulary shared by words and concepts "
        "(better for small models trained from scratch).",
    ),
    no_kl: bool = typer.Option(False, "--no-kl", help="RGL ablation: drop the KL term."),
    fixed_r: Optional[float] = typer.Option(None, "--fixed-r", help="RGL ablation: constant r."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a parser from scratch on any AMR corpus (rgl: trains the pass-1 reverse parser, decodes silver
    reversed graphs for the training set, then the two-pass model)."""
    from .graphs import read_amr
    from .parser import AmrTokenizer, TrainSettings, WordTokenizer, train_plain, train_rgl

    if order not in ("nlr", "nrl", "rgl"):
        raise LmlabError(f"--order {order!r}: choose nlr, nrl or rgl")
    if tokenizer not in ("bpe", "word"):
        raise LmlabError(f"--tokenizer {tokenizer!r}: choose bpe or word")
    graphs = read_amr(train_file)
    st = TrainSettings(
        steps=steps,
        d_model=d_model,
        layers=layers,
        heads=max(1, d_model // 32),
        ffn=4 * d_model,
        batch_size=batch_size,
        lr=lr,
        vocab_size=vocab_size,
        kl=not no_kl,
        fixed_r=fixed_r,
        seed=seed,
        gate_dim=2 * d_model,
    )

    def log(row):
        typer.echo(f"step {row['step']} loss {row['loss']:.3f}")

    tok = WordTokenizer.train(graphs) if tokenizer == "word" else AmrTokenizer.train(graphs, vocab_size)
    if order == "rgl":
        rev = train_plain(graphs, "nrl", st, tok=tok, log=log)
        silver = rev.parse_tokens([g.sentence for g in graphs], beam=1)
        parser = train_rgl(graphs, silver, rev, TrainSettings(**{**st.__dict__, "history": []}), log=log)
    else:
        parser = train_plain(graphs, order, st, tok=tok, log=log)
    parser.save(out)
    typer.echo(f"saved {parser.kind} parser ({order}) -> {out}")


@sub.command(name="eval")
def eval_cmd(
    pred: Path = typer.Argument(..., help="Predicted AMR file."),
    gold: Path = typer.Argument(..., help="Gold AMR file (same order)."),
    json_path: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG of the position-bucket F1 curves."),
    seed: int = typer.Option(0, "--seed", help="Seed of snowblink Smatch's random restarts and the bootstrap."),
) -> None:
    """Both Smatch scores (snowblink seeded; smatchpp ILP) with CIs, sub-scores and position-bucket F1."""
    from lmlab.core.paths import atomic_write_text
    from lmlab.core.report import markdown_table

    from .graphs import read_amr
    from .metrics import evaluate, plot_positions

    e = evaluate(read_amr(pred), read_amr(gold), seed=seed)
    typer.echo(markdown_table(e.rows(), floatfmt=".2f"))
    rows = [
        {"kind": k, **{f"b{i}": (None if v is None else 100 * v) for i, v in enumerate(c)}}
        for k, c in e.positions.items()
    ]
    typer.echo("F1 by relative position in the linearization (10 bins)\n" + markdown_table(rows, floatfmt=".1f"))
    if json_path:
        atomic_write_text(json_path, json.dumps(e.to_json(), indent=1, default=float))
    if plot:
        plot_positions({pred.stem: e.positions}, plot)


@sub.command()
def linearize(
    input: Path = typer.Argument(..., help="An AMR file, or (with --inverse) token lines."),
    order: str = typer.Option("nlr", "--order", help="nlr (default DFS) or nrl (RGL's reversal)."),
    inverse: bool = typer.Option(False, "--inverse", help="Token lines -> AMR graphs (repairs as # ::status)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o"),
) -> None:
    """AMR graphs <-> pointer-token linearizations."""
    from lmlab.core.paths import atomic_write_text

    from .graphs import AmrGraph, format_graph, read_amr
    from .linearize import ORDERS, delinearize
    from .linearize import linearize as lin

    if order not in ORDERS:
        raise LmlabError(f"--order {order!r}: choose one of {', '.join(ORDERS)}")
    if inverse:
        if not input.is_file():
            raise LmlabError(f"{input}: no such file")
        lines = [ln for ln in input.read_text(encoding="utf-8").splitlines() if ln.strip()]
        graphs = []
        for k, ln in enumerate(lines):
            d = delinearize(ln.split())
            graphs.append(AmrGraph(id=str(k + 1), metadata={"id": str(k + 1)}, tree=d.tree, status=d.repairs))
        text = "\n\n".join(format_graph(g) for g in graphs) + "\n"
    else:
        text = "".join(" ".join(lin(g.tree, order)) + "\n" for g in read_amr(input))
    if output:
        atomic_write_text(output, text)
    else:
        typer.echo(text, nl=False)


@sub.command()
def reproduce(
    json_path: Path = typer.Option(..., "--json", help="Write the results JSON here."),
    quick: bool = typer.Option(False, "--quick", help="Minutes-scale run (three seeds, small model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the figure and the report section."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="Single-threaded worker processes (default 2: one per core of a laptop)."
    ),
) -> None:
    """Default vs reverse vs RGL on The Little Prince (+ Bio): Smatch both ways, CIs, position curves."""
    from lmlab.core.paths import atomic_write_text
    from lmlab.core.report import ReproduceContext, section_markdown

    from .reproduce import run

    out_dir = out or json_path.parent / "amr_reproduce"
    out_dir.mkdir(parents=True, exist_ok=True)
    sec = run(ReproduceContext(out_dir=out_dir, quick=quick), workers=workers)
    atomic_write_text(
        json_path, json.dumps({**sec.data, "verdicts": [v.__dict__ for v in sec.verdicts]}, indent=1, default=float)
    )
    atomic_write_text(out_dir / "section.md", section_markdown(sec, out_dir))
    typer.echo(sec.markdown)
    for v in sec.verdicts:
        typer.echo(f"- {v.claim}: {v.measured} -> {v.status}")


@sub.command()
def bench(
    json_path: Path = typer.Option(Path("benchmarks/results/amr_bench.json"), "--json"),
    n: int = typer.Option(32, "--n", help="Test sentences to parse."),
    model: Optional[Path] = typer.Option(None, "--model", help="Parser dir (default: a small seeded one)."),
) -> None:
    """Sentences/s of batched beam parsing (batch 1 vs 32, beam 1 vs 5) and Smatch time per metric."""
    from .bench import run_bench

    run_bench(json_path, n=n, model=model)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="amr")
