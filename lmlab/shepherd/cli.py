"""`lmlab shepherd ...`: train-policy, annotate, train-prm, verify, score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from lmlab.core.errors import LmlabError

app = typer.Typer(
    no_args_is_help=True, help="Math-Shepherd: MC step labels, process reward model, best-of-N verification."
)


def _problems(source: str, n: int, seed: int, min_steps: int, max_steps: int, max_value: int, split: str):
    """'world' -> the synthetic world; otherwise a GSM8K-format jsonl file."""
    from .data import read_gsm8k
    from .world import Difficulty, make_problems

    if source == "world":
        try:
            d = Difficulty(min_steps, max_steps, max_value)
        except ValueError as e:
            raise LmlabError(f"--min-steps/--max-steps/--max-value: {e}") from None
        return make_problems(n, seed, d, split)
    return read_gsm8k(Path(source), limit=n)


@app.command("train-policy")
def train_policy_cmd(
    steps: int = typer.Option(800, help="Optimizer steps."),
    seed: int = typer.Option(0),
    eval_problems: int = typer.Option(200, help="Held-out problems for the greedy accuracy."),
    device: str = typer.Option("cpu"),
) -> None:
    """Train (or find cached) the tiny policy on the synthetic world; prints its path and greedy accuracy."""
    from lmlab.core.loader import load_model

    from .policy import PolicyConfig, greedy_accuracy, train_policy
    from .world import make_problems

    cfg = PolicyConfig(steps=steps, seed=seed)
    path = train_policy(cfg, progress=True, device=device)
    acc = greedy_accuracy(
        load_model(str(path), device=device), make_problems(eval_problems, seed, cfg.difficulty, "test")
    )
    typer.echo(f"policy: {path}\ngreedy accuracy on {eval_problems} held-out problems: {acc:.3f}")


@app.command()
def annotate(
    out: Path = typer.Option(..., "--out", help="Output folder (annotations.jsonl is resumable)."),
    model: str = typer.Option("shepherd-policy", "--model", "-m", help="Completer: alias, checkpoint dir or hub id."),
    source: str = typer.Option("world", help="'world' or a GSM8K-format jsonl file."),
    problems: int = typer.Option(100, help="Number of problems."),
    n: int = typer.Option(8, "-n", help="Completions per step prefix."),
    samples: int = typer.Option(4, help="Solutions sampled per problem."),
    temperature: float = typer.Option(1.0),
    max_new_tokens: int = typer.Option(96),
    seed: int = typer.Option(0),
    min_steps: int = typer.Option(2),
    max_steps: int = typer.Option(5),
    max_value: int = typer.Option(30),
    device: str = typer.Option("cpu"),
) -> None:
    """Label each step of sampled solutions by N completions (hard + soft); writes Math-Shepherd and trl jsonl."""
    from lmlab.core.loader import load_model

    from . import policy  # noqa: F401  (registers the shepherd-policy alias)
    from .annotate import AnnotateConfig
    from .annotate import annotate as run

    probs = _problems(source, problems, seed, min_steps, max_steps, max_value, "train")
    cfg = AnnotateConfig(n=n, samples=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    stats = run(load_model(model, device=device), probs, out, cfg)
    typer.echo(json.dumps(stats))


@app.command("train-prm")
def train_prm_cmd(
    data: Path = typer.Option(..., "--data", help="solutions.jsonl written by annotate."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write."),
    init: str = typer.Option("shepherd-policy", help="Model to fine-tune (the paper starts from the policy)."),
    mode: str = typer.Option("prm", help="prm | orm"),
    targets: str = typer.Option("hard", help="hard | soft (prm only)"),
    steps: int = typer.Option(300),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(32),
    device: str = typer.Option("cpu"),
) -> None:
    """Fine-tune a PRM (loss at step tags only) or an ORM (final-answer correctness) with the LM head."""
    from . import policy  # noqa: F401
    from .data import read_solutions
    from .prm import PRMTrainConfig, train_reward_model

    cfg = PRMTrainConfig(mode=mode, targets=targets, steps=steps, lr=lr, batch_size=batch_size)
    path = train_reward_model(init, read_solutions(data), cfg, out=out, device=device)
    typer.echo(f"{mode}: {path}")


@app.command()
def score(
    question: str = typer.Argument(...),
    steps: list[str] = typer.Argument(..., help="Solution steps, one argument each."),
    model: str = typer.Option(
        ..., "--model", "-m", help="PRM checkpoint, alias or hub id (e.g. peiyi9979/math-shepherd-mistral-7b-prm)."
    ),
    style: str = typer.Option("lmlab", help="lmlab | math-shepherd (input format)"),
    step_tag: str = typer.Option("ки"),
    good: str = typer.Option("+"),
    bad: str = typer.Option("-"),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
) -> None:
    """Print P(good) at each step (the per-step reward)."""
    from .prm import PRM, PRMFormat

    prm = PRM.load(model, PRMFormat(step_tag, good, bad, style), dtype=dtype, device=device)  # type: ignore[arg-type]
    for i, s in enumerate(prm.score_steps(question, steps), 1):
        typer.echo(f"step {i}: {s:.4f}")


@app.command()
def verify(
    prm: str = typer.Option(..., "--prm", help="PRM checkpoint."),
    orm: str = typer.Option(..., "--orm", help="ORM checkpoint."),
    model: str = typer.Option("shepherd-policy", "--model", "-m", help="Policy."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON here."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot here."),
    problems: int = typer.Option(100),
    ns: list[int] = typer.Option([1, 4, 16, 64], "--n"),
    temperature: float = typer.Option(0.7),
    seed: int = typer.Option(0),
    min_steps: int = typer.Option(2),
    max_steps: int = typer.Option(5),
    max_value: int = typer.Option(30),
    device: str = typer.Option("cpu"),
) -> None:
    """Accuracy of SC, ORM, PRM and SC+PRM best-of-N on held-out problems, with bootstrap 95 % intervals."""
    from lmlab.core.loader import load_model
    from lmlab.core.paths import atomic_write_text

    from .policy import greedy_accuracy
    from .prm import PRM
    from .verify import evaluate, plot, sample_candidates, score_candidates

    probs = _problems("world", problems, seed, min_steps, max_steps, max_value, "test")
    lm = load_model(model, device=device)
    cands = sample_candidates(lm, probs, max(ns), temperature, seed=seed)
    score_candidates(probs, cands, PRM.load(prm, device=device), PRM.load(orm, device=device))
    result = evaluate(cands, ns, seed)
    result["policy_greedy_accuracy"] = greedy_accuracy(lm, probs)
    text = json.dumps(result, indent=2)
    if json_path:
        atomic_write_text(json_path, text)
    if plot_path:
        plot(result, plot_path)
    typer.echo(text)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="shepherd")
