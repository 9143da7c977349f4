"""`lmlab socratic run | replay | view | reproduce`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ..core.errors import LmlabError

CHECKERS_HELP = "number:N | sympy:EXPR | 24:a,b,c,d | sat:FILE.cnf | python:module:function"


def make_checker(spec: str | None) -> Any:
    from . import checkers as C

    if not spec:
        return None
    kind, _, arg = spec.partition(":")
    if kind == "number":
        return C.numeric_answer(arg)
    if kind == "sympy":
        return C.sympy_equal(arg)
    if kind == "arith":
        return C.arithmetic_claims
    if kind == "24":
        return C.game24_checker([int(x) for x in arg.split(",")])
    if kind == "sat":
        clauses, n = read_dimacs(Path(arg))
        return C.sat_checker(clauses, n)
    if kind == "python":
        import importlib

        mod, _, fn = arg.rpartition(":")
        try:
            f = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise LmlabError(f"--checker {spec!r}: {e}") from None
        return C.python_checker(f, name=fn)
    raise LmlabError(f"unknown --checker {spec!r}", hint=CHECKERS_HELP)


def read_dimacs(path: Path) -> tuple[list[list[int]], int]:
    if not path.exists():
        raise LmlabError(f"{path}: no such CNF file")
    clauses, n = [], 0
    for i, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "c%":
            continue
        if s.startswith("p"):
            parts = s.split()
            if len(parts) != 4 or parts[1] != "cnf":
                raise LmlabError(f"{path}:{i}: expected 'p cnf VARS CLAUSES'")
            n = int(parts[2])
            continue
        try:
            lits = [int(x) for x in s.split()]
        except ValueError:
            raise LmlabError(f"{path}:{i}: a clause is integers ending in 0") from None
        if not lits or lits[-1] != 0:
            raise LmlabError(f"{path}:{i}: a clause must end with 0")
        clauses.append(lits[:-1])
    return clauses, n or max((abs(x) for c in clauses for x in c), default=0)


def make_backend_(backend: str, model: str, concurrency: int) -> Any:
    from ..core.backends import make_backend

    if backend == "local":
        return make_backend("local", model)
    return make_backend(backend, model, concurrency=concurrency)


def _params(max_new_tokens: int, temperature: float, seed: int) -> Any:
    from ..core.engine import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def _ask(prompt: str) -> str:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        return "x"
    return line.rstrip("\n")


def confirm_hook(turn: Any, store: Any) -> str:
    """Before each call: show the prompt; Enter sends, 'e' edits it (recorded as a human edit), 'x' stops."""
    print(f"\n[{turn.id} · {turn.pattern}] {turn.prompt}")
    while True:
        a = _ask("send? [Enter=send, e=edit, x=stop] ").strip().lower()
        if a in ("", "s"):
            return "send"
        if a == "x":
            return "stop"
        if a == "e":
            new = _ask("new prompt> ")
            if new.strip():
                store.edit(turn, "prompt", new)
            print(f"[{turn.id}] {turn.prompt}")


HELP = """commands:
  ask [PATTERN:] TEXT     continue from the current turn (a branch if it has children already)
  fresh [PATTERN:] TEXT   start from a fresh context
  branch ID               make turn ID the current turn
  excerpt TEXT            carry only TEXT (part of the current reply) into the next ask
  edit ID TEXT            replace a turn's prompt (recorded) and re-ask it as a new branch
  show [ID]               print a turn;  tree   list the turns;  stop   end the session
patterns: deduction transformation decomposition verification integration"""


def _split_pattern(text: str) -> tuple[str, str]:
    from .tree import PATTERNS

    head, sep, rest = text.partition(":")
    if sep and head.strip() in PATTERNS:
        return head.strip(), rest.strip()
    return "deduction", text.strip()


def interactive(session: Any) -> None:
    """A line-oriented REPL over `Session` (works through any terminal, and through a pty in tests)."""
    tree = session.store.tree
    cur: str | None = list(tree.turns)[-1] if len(tree) else None
    excerpt: str | None = None
    print(HELP)
    while True:
        line = _ask(f"socratic[{cur or 'fresh'}]> ").strip()
        cmd, _, arg = line.partition(" ")
        try:
            if cmd in ("stop", "quit", "exit", "x"):
                session.store.stop("human_stop", "stopped at the prompt")
                print("stopped")
                return
            if cmd in ("ask", "fresh"):
                pattern, text = _split_pattern(arg)
                parent = None if cmd == "fresh" else cur
                t = session.ask(pattern, text, parent, excerpt if parent else None)
                excerpt, cur = None, t.id
                print(f"[{t.id} · {t.pattern} · {t.usage['completion_tokens']} tokens]\n{t.reply}")
            elif cmd == "branch":
                cur = tree[arg.strip()].id
                print(f"current turn: {cur}")
            elif cmd == "excerpt":
                if cur is None or arg not in (tree[cur].reply or ""):
                    print("error: the excerpt must be part of the current turn's reply")
                else:
                    excerpt = arg
                    print(f"next ask carries {len(arg)} characters of {cur}'s reply")
            elif cmd == "edit":
                tid, _, text = arg.partition(" ")
                old = tree[tid]
                new = session.ask(old.pattern, old.prompt, old.parent)  # the same ask as a new branch ...
                session.store.edit(new, "prompt", text)  # ... whose prompt the person rewrote
                print(f"[{new.id}] prompt edited; it is a branch of {old.parent or 'a fresh context'}")
                cur = new.id
            elif cmd == "show":
                t = tree[arg.strip() or cur or ""]
                print(json.dumps(t.openai_messages(), indent=1, ensure_ascii=False))
            elif cmd == "tree":
                for t in tree:
                    print(f"{t.id:>8}  {t.pattern:<14} parent={t.parent}  {t.prompt[:60]!r}")
            elif cmd in ("help", "?", ""):
                print(HELP)
            else:
                print(f"unknown command {cmd!r}; type help")
        except LmlabError as e:
            print(f"error: {e}")


def register(app: typer.Typer) -> None:
    sub = typer.Typer(
        no_args_is_help=True, help="Socratic reasoning: a dialogue tree of patterned LLM turns (arXiv:2309.05689)."
    )
    app.add_typer(sub, name="socratic")

    @sub.command("run")
    def run(
        problem: Optional[str] = typer.Argument(None, help="The problem (omit with --plan or --interactive)."),
        plan: Optional[Path] = typer.Option(None, "--plan", help="JSONL plan: one step per line (see README)."),
        out: Path = typer.Option(Path("socratic-out"), "--out", "-o", help="Run folder: tree.jsonl + calls.sqlite."),
        backend: str = typer.Option("local", "--backend", "-b", help="local | openai | http(s)://host/v1"),
        model: str = typer.Option(
            "smollm2-135m-instruct", "--model", "-m", help="Alias, HF id/dir, .gguf, or remote name."
        ),
        controller: str = typer.Option("socratic", "--controller", help="socratic | tot"),
        checker: Optional[str] = typer.Option(None, "--checker", help=CHECKERS_HELP),
        verify: str = typer.Option("auto", "--verify", help="auto | checker | llm | both | none"),
        depth: int = typer.Option(1, "--depth", help="Max decomposition depth."),
        breadth: int = typer.Option(3, "--breadth", help="Max sub-problems per decomposition."),
        refine: int = typer.Option(1, "--refine", help="Refinement rounds after a failed check."),
        max_calls: Optional[int] = typer.Option(None, "--max-calls"),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Prompt + completion tokens."),
        max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="Wall-clock budget."),
        max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
        temperature: float = typer.Option(0.0, "--temperature"),
        seed: int = typer.Option(0, "--seed"),
        concurrency: int = typer.Option(8, "--concurrency", help="In-flight HTTP requests."),
        interactive_: bool = typer.Option(False, "--interactive", "-i", help="A person drives (or approves) turns."),
    ) -> None:
        """Run the controller on PROBLEM, a plan file, or interactively; rerun the same command to resume."""
        from ..core.llmcache import LLMCache
        from .calls import Budget, BudgetExhausted, Caller
        from .engine import EngineConfig, SocraticController, ToTController
        from .session import Session, load_plan, run_plan
        from .tree import TreeStore

        if problem is None and plan is None and not interactive_:
            raise LmlabError("give a PROBLEM, --plan FILE or --interactive")
        if verify not in ("auto", "checker", "llm", "both", "none"):
            raise LmlabError(f"--verify {verify!r}", hint="auto | checker | llm | both | none")
        if controller not in ("socratic", "tot"):
            raise LmlabError(f"--controller {controller!r}", hint="socratic | tot")
        steps = load_plan(plan) if plan else None  # validate before loading a model
        chk = make_checker(checker)
        out.mkdir(parents=True, exist_ok=True)
        be = make_backend_(backend, model, concurrency)
        caller = Caller(
            be,
            LLMCache(out / "calls.sqlite"),
            _params(max_new_tokens, temperature, seed),
            Budget(max_calls, max_tokens, max_seconds),
        )
        store = TreeStore(out / "tree.jsonl")
        cfg = EngineConfig(max_depth=depth, max_breadth=breadth, verify=verify, refine_rounds=refine)
        if steps is not None or (interactive_ and problem is None):
            sess = Session(caller, store, cfg)
            try:
                if steps is not None:
                    run_plan(sess, steps, plan)
                    store.stop("done", f"plan of {len(steps)} steps")
                else:
                    interactive(sess)
            except BudgetExhausted as e:
                store.stop(e.reason, e.detail)
                print(f"stopped: {e}")
            print(f"{len(store.tree)} turns -> {store.path}; {json.dumps(caller.summary())}")
            return
        hook = confirm_hook if interactive_ else None
        ctl = (
            ToTController(caller, store, cfg, checker=chk, human=hook)
            if controller == "tot"
            else SocraticController(caller, store, cfg, checker=chk, human=hook)
        )
        r = ctl.run(problem or "")
        print(f"stop: {r.stop_reason}{' (' + r.detail + ')' if r.detail else ''}; check: {r.ok}; {json.dumps(r.calls)}")
        print(f"answer [{r.answer_turn}]:\n{r.answer}")
        print(f"tree: {store.path} ({len(store.tree)} turns); view it with `lmlab socratic view {store.path}`")

    @sub.command("replay")
    def replay_cmd(
        source: Optional[Path] = typer.Argument(
            None, help="Notebook folder, .ipynb or turns.jsonl (default: shared data)."
        ),
        backend: str = typer.Option(
            "recorded", "--backend", "-b", help="recorded | local | openai | http(s)://host/v1"
        ),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder for the replayed tree + call cache."),
        turns: Optional[str] = typer.Option(None, "--turns", help="e.g. 1-6,14 (default: all)."),
        max_new_tokens: int = typer.Option(1024, "--max-new-tokens", help="The notebooks asked for 1024."),
        keep_context: bool = typer.Option(
            False, "--keep-context", help="Carry the recorded replies, not the new ones."
        ),
        stats_only: bool = typer.Option(False, "--stats", help="Print the transcript's structure and exit."),
    ) -> None:
        """Parse the P vs NP transcript into a tree; replay it (recorded replies, or regenerated by a model)."""
        from ..core.llmcache import LLMCache
        from .calls import Caller
        from .transcript import RecordedBackend, load_records, replay, replay_stats, transcript_tree
        from .tree import TreeStore

        tree = transcript_tree(load_records(source))
        print(json.dumps(replay_stats(tree), indent=1, ensure_ascii=False))
        if stats_only:
            return
        sel = None
        if turns:
            sel = []
            for part in turns.split(","):
                a, _, b = part.partition("-")
                try:
                    sel += [f"t{i}" for i in range(int(a), int(b or a) + 1)]
                except ValueError:
                    raise LmlabError(f"--turns {turns!r}", hint="e.g. 1-6,14") from None
        out = out or Path("socratic-replay")
        out.mkdir(parents=True, exist_ok=True)
        be = RecordedBackend(tree) if backend == "recorded" else make_backend_(backend, model, 8)
        cache = LLMCache(out / "calls.sqlite") if backend != "recorded" else None
        caller = Caller(be, cache, _params(max_new_tokens, 0.0, 0))
        store = TreeStore(out / "tree.jsonl")
        new = replay(tree, be, store, caller, regenerate_context=not keep_context, turns=sel)
        same = sum(
            new.turns[t.id].reply == t.reply and new.turns[t.id].messages == t.messages
            for t in tree
            if t.id in new.turns
        )
        print(f"replayed {len(new)} turns -> {store.path}; identical to the transcript: {same}/{len(new)}")

    @sub.command("view")
    def view(
        tree_path: Path = typer.Argument(..., help="A tree.jsonl (or a transcript source with --transcript)."),
        html_out: Optional[Path] = typer.Option(None, "--html", help="Write the self-contained HTML page here."),
        mermaid_out: Optional[Path] = typer.Option(None, "--mermaid", help="Write Mermaid text here."),
        dot_out: Optional[Path] = typer.Option(None, "--dot", help="Write Graphviz DOT here."),
        openai_out: Optional[Path] = typer.Option(None, "--openai", help="Write each turn as OpenAI messages (JSONL)."),
        transcript: bool = typer.Option(False, "--transcript", help="TREE_PATH is the P vs NP notebooks/turns.jsonl."),
        price_in: float = typer.Option(0.0, "--price-in", help="$ per 1M prompt tokens (for the cost column)."),
        price_out: float = typer.Option(0.0, "--price-out", help="$ per 1M completion tokens."),
    ) -> None:
        """Export a tree for offline viewing (nothing is fetched from the network)."""
        from ..core.data import write_jsonl
        from ..core.paths import atomic_write_text
        from .transcript import load_records, transcript_tree
        from .tree import load_tree
        from .viewer import dot, html_page, mermaid

        tree = transcript_tree(load_records(tree_path)) if transcript else load_tree(tree_path)
        if not any((html_out, mermaid_out, dot_out, openai_out)):
            html_out = tree_path.with_suffix(".html") if not tree_path.is_dir() else tree_path / "tree.html"
        if html_out:
            atomic_write_text(html_out, html_page(tree, price_in=price_in, price_out=price_out))
        if mermaid_out:
            atomic_write_text(mermaid_out, mermaid(tree))
        if dot_out:
            atomic_write_text(dot_out, dot(tree))
        if openai_out:
            write_jsonl(openai_out, tree.export_openai())
        for p in (html_out, mermaid_out, dot_out, openai_out):
            if p:
                print(f"wrote {p}")

    @sub.command("reproduce")
    def reproduce_cmd(
        quick: bool = typer.Option(False, "--quick", help="The laptop-minutes version."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the measured data here."),
        out: Path = typer.Option(Path("runs/socratic"), "--out", "-o"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    ) -> None:
        """Socratic (with / without programmatic verification) vs direct vs CoT at equal call budgets."""
        from ..core.paths import atomic_write_text
        from ..core.report import ReproduceContext
        from .reproduce import run as rrun

        out.mkdir(parents=True, exist_ok=True)
        sec = rrun(ReproduceContext(out_dir=out, quick=quick, model=model))
        print(sec.markdown)
        if json_out:
            atomic_write_text(json_out, json.dumps(sec.data, indent=2))
            print(f"wrote {json_out}")
