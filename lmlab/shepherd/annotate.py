"""Monte-Carlo step annotation (Math-Shepherd, section 3.3): label a step by completing from it N times.

For each problem: sample solutions from the policy; cut each solution after every step; complete every
cut N times (shared-prefix batching, `complete.complete_cuts`) and check the completions' final answers.
Soft label = fraction of completions that reach the gold answer; hard label = 1 if any does. The last
step's label is the solution's own correctness.

Resumable: `annotations.jsonl` gets one line per finished problem (one write + fsync each; a torn last
line from a crash is dropped on restart), and a rerun skips the problems already there. Sampling is
seeded per problem, so a killed-and-resumed run writes exactly what an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmlab.core.data import write_jsonl
from lmlab.core.engine import SamplingParams, make_generator
from lmlab.core.errors import LmlabError
from lmlab.core.loader import LoadedModel

from .complete import complete_cuts
from .data import Problem, StepSolution, extract_answer, is_correct, to_math_shepherd, to_row, to_trl
from .policy import encode_prompt


@dataclass
class AnnotateConfig:
    n: int = 8  # completions per step prefix (the paper uses 8)
    samples: int = 4  # solutions sampled per problem
    temperature: float = 1.0
    max_new_tokens: int = 96
    seed: int = 0
    max_rows: int = 512  # decode batch bound


def problem_seed(seed: int, pid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{pid}".encode()).digest()[:7], "little")


def step_ends(tokens: list[int], newline_ids: set[int]) -> list[int]:
    """Token index just after each step (a step ends with a token containing a newline; a trailing partial
    line is a step too)."""
    ends = [i + 1 for i, t in enumerate(tokens) if t in newline_ids]
    if tokens and (not ends or ends[-1] < len(tokens)):
        ends.append(len(tokens))
    return ends


def newline_token_ids(tokenizer: Any) -> set[int]:
    return {i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])}


def annotate_problem(
    lm: LoadedModel, p: Problem, cfg: AnnotateConfig, newline_ids: set[int]
) -> tuple[list[dict[str, Any]], int]:
    """Sampled solutions of one problem with soft/hard step labels; also returns the completions drawn."""
    tok = lm.tokenizer
    gen = make_generator(problem_seed(cfg.seed, p.id), lm.model.device)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    prompt = encode_prompt(tok, p.question)
    sols = complete_cuts(lm.model, tok, [prompt], [[len(prompt)]], cfg.samples, params, gen, cfg.max_rows)[0][0]
    sols = [s for s in sols if s]
    if not sols:
        return [], cfg.samples
    seqs = [prompt + s for s in sols]
    ends = [step_ends(s, newline_ids) for s in sols]
    cuts = [[len(prompt) + e for e in es[:-1]] for es in ends]  # the last step is judged by its own answer
    runs = (
        complete_cuts(lm.model, tok, seqs, cuts, cfg.n, params, gen, cfg.max_rows) if any(cuts) else [[] for _ in seqs]
    )
    rows = []
    for s, es, comps in zip(sols, ends, runs):
        steps = [tok.decode(s[a:b], skip_special_tokens=True).strip() for a, b in zip([0] + es[:-1], es)]
        answer = extract_answer(tok.decode(s, skip_special_tokens=True))
        soft = [
            sum(is_correct(extract_answer(tok.decode(c, skip_special_tokens=True)), p.answer) for c in cs) / cfg.n
            for cs in comps
        ]
        soft.append(float(is_correct(answer, p.answer)))
        rows.append(
            {
                "steps": steps,
                "soft": soft,
                "hard": [float(x > 0) for x in soft],
                "answer": answer,
                "correct": is_correct(answer, p.answer),
            }
        )
    return rows, cfg.n * sum(len(c) for c in cuts) + cfg.samples


# ------------------------------------------------------------------------------------------ resumable store
def _load_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished problems in annotations.jsonl; a torn last line (crash mid-write) is cut off."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good = raw[: raw.rfind(b"\n") + 1]
    if len(good) < len(raw):
        with path.open("r+b") as f:
            f.truncate(len(good))
    for no, line in enumerate(good.decode("utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            done[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LmlabError(
                f"{path}:{no}: not an annotation row", hint="delete the file or pick another --out"
            ) from None
    return done


def _append(path: Path, row: dict[str, Any]) -> None:
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one write of one line: O_APPEND keeps it whole
        os.fsync(fd)
    finally:
        os.close(fd)


def solutions_of(rows: list[dict[str, Any]], which: str = "soft") -> list[StepSolution]:
    """Annotation rows -> StepSolutions with soft or hard labels."""
    return [
        StepSolution(r["question"], s["steps"], list(s[which]), s["answer"], r["gold"], f"{r['id']}#{k}")
        for r in rows
        for k, s in enumerate(r["solutions"])
    ]


def annotate(
    lm: LoadedModel,
    problems: list[Problem],
    out_dir: Path,
    cfg: AnnotateConfig,
    progress: bool = True,
    on_problem: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Annotate every problem not yet in out_dir/annotations.jsonl, then (re)write the exports:
    solutions.jsonl (lmlab rows, soft labels), math_shepherd.jsonl and trl.jsonl (hard labels)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "annotations.jsonl"
    meta = {"config": asdict(cfg), "model": str(lm.path)}
    meta_path = out_dir / "annotate_config.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["config"] != meta["config"]:
        raise LmlabError(
            f"{out_dir}: holds annotations made with another configuration",
            hint="use a new --out folder or the same settings",
        )
    meta_path.write_text(json.dumps(meta, indent=2))
    done = _load_done(store)
    todo = [p for p in problems if p.id not in done]
    nl = newline_token_ids(lm.tokenizer)
    completions, t0 = 0, time.time()
    bar = tqdm(
        todo,
        desc="annotate",
        unit="problem",
        disable=not progress,
        initial=len(problems) - len(todo),
        total=len(problems),
    )
    for p in bar:
        sols, k = annotate_problem(lm, p, cfg, nl)
        row = {"id": p.id, "question": p.question, "gold": p.answer, "solutions": sols}
        _append(store, row)
        done[p.id] = row
        completions += k
        bar.set_postfix(completions_per_s=f"{completions / max(time.time() - t0, 1e-9):.0f}")
        if on_problem is not None:
            on_problem(len(done))
    seconds = time.time() - t0
    rows = [done[p.id] for p in problems if p.id in done]
    soft, hard = solutions_of(rows, "soft"), solutions_of(rows, "hard")
    write_jsonl(out_dir / "solutions.jsonl", (to_row(s) for s in soft))
    write_jsonl(out_dir / "math_shepherd.jsonl", (to_math_shepherd(s) for s in hard))
    write_jsonl(out_dir / "trl.jsonl", (to_trl(s) for s in hard))
    return {
        "problems": len(rows),
        "new_problems": len(todo),
        "completions": completions,
        "seconds": seconds,
        "completions_per_s": completions / seconds if seconds > 0 and completions else 0.0,
    }
