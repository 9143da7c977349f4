"""Controllers that apply the Socratic patterns over a dialogue tree.

`SocraticController.run(problem)`:
  solve(p, depth): [transformation: restate p] -> decomposition (numbered sub-problems, at most `max_breadth`,
  only while depth < `max_depth`) -> solve every sub-problem (concurrently on HTTP backends) -> integration
  (the sub-answers, as excerpts, merged into one answer); a problem that does not split is answered by
  deduction. Every answer is verified: a programmatic checker when one is given (python / sympy / SAT /
  Game of 24, see `checkers`), else (or when the checker cannot tell) an LLM self-check turn; a failed check
  gives a refinement turn carrying the feedback, up to `refine_rounds` times.
`ToTController.run(problem)`: Tree-of-Thoughts BFS (propose k next steps per state, value each, keep the
  best b) over the same tree and budgets.

Turn ids are paths ("p.2/deduce", "p/verify1"), so a resumed or concurrent run builds the same tree; a turn
already answered in the store is reused as is, and any call is answered by the cache first (calls.Caller).
Budgets (calls, tokens, wall-clock) raise `BudgetExhausted` in the caller; the controller stops there and
returns the best answer so far with the named reason.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .calls import BudgetExhausted, Caller
from .checkers import Check, Checker
from .tree import TreeStore, Turn

DEFAULT_ROLES = {
    "decomposition": "You are a careful problem solver. You split problems into small steps.",
    "deduction": "You are a careful problem solver. You solve problems step by step.",
    "transformation": "You are a careful problem solver. You restate problems precisely.",
    "verification": "You are a strict checker. You find mistakes.",
    "integration": "You are a careful problem solver. You combine partial results into one answer.",
}

PROMPTS = {
    "transformation": "Restate this problem in your own words, precisely and briefly.\n\nProblem: {problem}",
    "decomposition": "Split this problem into at most {breadth} smaller sub-problems that together solve it. "
    "Answer with a numbered list, one sub-problem per line.\n\nProblem: {problem}",
    "deduction": "{problem}\n\nSolve it step by step.{answer_hint}",
    "subproblem": "Solve this sub-problem of the problem above, step by step.\n\nSub-problem: {sub}",
    "integration": "Problem: {problem}\n\nResults of its sub-problems:\n{results}\n\nUse them to solve the problem."
    "{answer_hint}",
    "self_check": "Check the answer above step by step. End with 'VERDICT: correct' or 'VERDICT: wrong'.",
    "refine": "A check of your answer found a problem: {feedback}\nGive a corrected answer.{answer_hint}",
}


class HumanStop(Exception):
    pass


@dataclass
class EngineConfig:
    max_depth: int = 1  # how many times a problem may be decomposed
    max_breadth: int = 3  # sub-problems kept per decomposition
    verify: str = "auto"  # auto (checker if given, else LLM) | checker | llm | both | none
    refine_rounds: int = 1
    transform: bool = False  # a transformation turn before the root is decomposed
    decompose: bool = True
    answer_hint: str = ""  # appended to solving prompts, e.g. " End with 'The answer is N'."
    roles: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    max_new_tokens: int | None = None


@dataclass
class Result:
    answer: str | None
    ok: bool | None  # the last check's verdict (None: unchecked or undecidable)
    stop_reason: str  # done | max_calls | max_tokens | max_seconds | human_stop
    detail: str
    calls: dict[str, Any]
    answer_turn: str | None = None


# A human hook sees each turn before it is sent and returns "send" or "stop" (it may edit the turn first,
# through store.edit, so the edit is recorded).
HumanHook = Callable[[Turn, TreeStore], str]


def numbered_items(text: str, limit: int) -> list[str]:
    """Sub-problems from a numbered / bulleted list (the decomposition reply)."""
    items = []
    for line in text.splitlines():
        m = re.match(r"\s*(?:\d+[.)]|[-*•])\s+(.+)", line)
        if m and len(m.group(1).strip()) > 3:
            items.append(m.group(1).strip())
    return items[:limit]


class _Base:
    def __init__(
        self,
        caller: Caller,
        store: TreeStore,
        cfg: EngineConfig | None = None,
        checker: Checker | None = None,
        human: HumanHook | None = None,
    ):
        self.caller, self.store, self.cfg = caller, store, cfg or EngineConfig()
        self.checker, self.human = checker, human

    def _sys(self, pattern: str) -> dict[str, str]:
        return {"role": "system", "content": self.cfg.roles.get(pattern, DEFAULT_ROLES[pattern])}

    def turn(
        self,
        tid: str,
        pattern: str,
        messages: list[dict[str, str]],
        parent: str | None,
        context: list[dict[str, Any]],
        **meta: Any,
    ) -> Turn:
        """Create (or reuse, on resume) one turn and make sure it has a reply."""
        t = self.store.tree.turns.get(tid)
        if t is not None and t.reply is not None:
            return self._reuse(t)  # answered before a restart: no call, the same path
        self.caller._reserve()  # before the turn is recorded: a budget stop leaves no unanswered turn
        if t is None:
            t = self.store.add(Turn(tid, pattern, messages, parent, context=context, meta=meta))
        if self.human is not None and self.human(t, self.store) == "stop":
            raise HumanStop(tid)
        t0 = time.perf_counter()
        c = self.caller.call(t.messages, tag=pattern, max_new_tokens=self.cfg.max_new_tokens, reserved=True)
        self.store.set_reply(t, c.text, c.usage, round(time.perf_counter() - t0, 4), c.finish_reason)
        return t

    def _reuse(self, t: Turn) -> Turn:
        # A reused turn still counts against the budget, exactly as in the uninterrupted run.
        self.caller._reserve()
        with self.caller.lock:
            self.caller.tokens += t.usage.get("prompt_tokens", 0) + t.usage.get("completion_tokens", 0)
        return t

    def check(self, t: Turn, problem_msgs: list[dict[str, str]], path: str, round_: int) -> Check:
        """Verification: programmatic checker and/or an LLM self-check turn; the verdict goes in the turn."""
        mode = self.cfg.verify
        res: Check | None = None
        if self.checker is not None and mode in ("auto", "checker", "both"):
            res = self.checker(t.reply or "")
            self.store.annotate(t, check={"by": "checker", "ok": res.ok, "feedback": res.feedback})
            if mode == "checker" or (res.ok is not None and mode == "auto"):
                return res
        if mode in ("llm", "both") or (mode == "auto" and (res is None or res.ok is None)):
            msgs = problem_msgs + [
                {"role": "assistant", "content": t.reply or ""},
                {"role": "user", "content": PROMPTS["self_check"]},
            ]
            msgs[0] = self._sys("verification")
            ctx = _ctx(msgs, {len(msgs) - 2: {"kind": "verbatim", "turn": t.id}})
            v = self.turn(f"{path}/verify{round_}", "verification", msgs, t.id, ctx)
            verdict = re.findall(r"verdict\s*:\s*\**\s*(correct|wrong|incorrect)", v.reply or "", flags=re.I)
            ok = None if not verdict else verdict[-1].lower() == "correct"
            llm = Check(ok, (v.reply or "")[-300:] if ok is False else "self-check: " + str(ok))
            if res is None or res.ok is None or mode == "llm":
                return llm
            return Check(res.ok and bool(llm.ok), f"{res.feedback}; {llm.feedback}")
        return res or Check(None, "not verified")

    def verified(self, t: Turn, problem_msgs: list[dict[str, str]], path: str) -> tuple[Turn, Check]:
        """Check an answer; refine it with the feedback until it passes or the rounds are used."""
        if self.cfg.verify == "none":
            return t, Check(None, "not verified")
        for r in range(self.cfg.refine_rounds + 1):
            res = self.check(t, problem_msgs, path, r)
            if path == "p":
                self._note_best(t, res)
            if res.ok or r == self.cfg.refine_rounds:
                return t, res
            msgs = problem_msgs + [
                {"role": "assistant", "content": t.reply or ""},
                {
                    "role": "user",
                    "content": PROMPTS["refine"].format(feedback=res.feedback, answer_hint=self.cfg.answer_hint),
                },
            ]
            msgs[0] = self._sys("verification")
            ctx = _ctx(msgs, {len(msgs) - 2: {"kind": "verbatim", "turn": t.id}})
            t = self.turn(f"{path}/refine{r + 1}", "verification", msgs, t.id, ctx, refines=t.id)
        return t, res

    def _finish(self, run: Callable[[], tuple[Turn | None, Check]]) -> Result:
        self.best: tuple[Turn | None, Check] = (None, Check(None, ""))
        try:
            t, res = run()
            reason, detail = "done", ""
        except BudgetExhausted as e:
            (t, res), reason, detail = self.best, e.reason, e.detail
        except HumanStop as e:
            (t, res), reason, detail = self.best, "human_stop", f"stopped before turn {e}"
        self.store.stop(reason, detail)
        return Result(
            t.reply if t else None, res.ok, reason, detail, self.caller.summary(), answer_turn=t.id if t else None
        )

    def _note_best(self, t: Turn, res: Check) -> None:
        cur_t, cur = self.best
        if cur_t is None or (res.ok and not cur.ok) or (res.ok == cur.ok):
            self.best = (t, res)


def _ctx(msgs: list[dict[str, str]], carried: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [carried.get(i, {"kind": "system" if m["role"] == "system" else "prompt"}) for i, m in enumerate(msgs)]


class SocraticController(_Base):
    def run(self, problem: str) -> Result:
        return self._finish(lambda: self.solve(problem, "p", 0, None, None))

    def solve(
        self, problem: str, path: str, depth: int, parent: str | None, carried: dict[str, Any] | None
    ) -> tuple[Turn, Check]:
        cfg = self.cfg
        if path == "p" and cfg.transform:
            msgs = [
                self._sys("transformation"),
                {"role": "user", "content": PROMPTS["transformation"].format(problem=problem)},
            ]
            tr = self.turn("p/transform", "transformation", msgs, parent, _ctx(msgs, {}))
            parent = tr.id
        subs: list[str] = []
        if cfg.decompose and depth < cfg.max_depth and cfg.max_breadth > 1:
            msgs = [
                self._sys("decomposition"),
                {"role": "user", "content": PROMPTS["decomposition"].format(problem=problem, breadth=cfg.max_breadth)},
            ]
            d = self.turn(f"{path}/decompose", "decomposition", msgs, parent, _ctx(msgs, {}))
            subs = numbered_items(d.reply or "", cfg.max_breadth)
            self.store.annotate(d, subproblems=subs)
            parent = d.id
        if len(subs) < 2:  # atomic: deduction
            msgs = [
                self._sys("deduction"),
                {"role": "user", "content": PROMPTS["deduction"].format(problem=problem, answer_hint=cfg.answer_hint)},
            ]
            t = self.turn(f"{path}/deduce", "deduction", msgs, parent, _ctx(msgs, {}))
            return self.verified(t, msgs, path)
        results = self._solve_subs(problem, subs, path, depth, parent)
        lines = "\n".join(
            f"{i + 1}. {s}\n   Result: {_excerpt(r.reply)}" for i, (s, (r, _)) in enumerate(zip(subs, results))
        )
        msgs = [
            self._sys("integration"),
            {
                "role": "user",
                "content": PROMPTS["integration"].format(problem=problem, results=lines, answer_hint=cfg.answer_hint),
            },
        ]
        excerpts = [{"turn": r.id, "text": _excerpt(r.reply)} for r, _ in results]
        ctx = _ctx(msgs, {1: {"kind": "prompt", "excerpts": excerpts}})
        t = self.turn(f"{path}/integrate", "integration", msgs, parent, ctx)
        return self.verified(t, msgs, path)

    def _solve_subs(
        self, problem: str, subs: list[str], path: str, depth: int, parent: str
    ) -> list[tuple[Turn, Check]]:
        def one(i: int) -> tuple[Turn, Check]:
            sub_path = f"{path}.{i + 1}"
            if depth + 1 < self.cfg.max_depth:
                return self.solve(subs[i], sub_path, depth + 1, parent, None)
            msgs = [
                self._sys("deduction"),
                {"role": "user", "content": problem},
                {"role": "assistant", "content": subs[i]},
                {"role": "user", "content": PROMPTS["subproblem"].format(sub=subs[i])},
            ]
            ctx = _ctx(msgs, {2: {"kind": "excerpt", "turn": parent}})
            t = self.turn(f"{sub_path}/deduce", "deduction", msgs, parent, ctx, subproblem=subs[i])
            return t, Check(None, "sub-answer (verified when integrated)")

        if self.caller.concurrent and len(subs) > 1:
            with ThreadPoolExecutor(max_workers=len(subs)) as pool:
                return list(pool.map(one, range(len(subs))))
        return [one(i) for i in range(len(subs))]


def _excerpt(text: str | None, limit: int = 400) -> str:
    """The part of a reply carried forward: its last `limit` characters (where the result usually is)."""
    t = " ".join((text or "").split())
    return t if len(t) <= limit else "…" + t[-limit:]


class ToTController(_Base):
    """Tree-of-Thoughts BFS (princeton-nlp/tree-of-thought-llm `bfs.py`: propose -> value -> greedy select),
    every proposal and value a turn in the same tree. Values: the checker when it decides a state, else an
    LLM 'sure / likely / impossible' judgement scored 20 / 1 / 0.001 as in ToT."""

    def __init__(self, *a: Any, steps: int = 2, k: int = 3, b: int = 2, **kw: Any):
        super().__init__(*a, **kw)
        self.steps, self.k, self.b = steps, k, b

    def run(self, problem: str) -> Result:
        return self._finish(lambda: self._bfs(problem))

    def _bfs(self, problem: str) -> tuple[Turn | None, Check]:
        frontier: list[tuple[str, str | None]] = [("", None)]  # (steps so far, turn id of the last step)
        for s in range(self.steps):
            cands: list[tuple[str, str]] = []
            for j, (state, parent) in enumerate(frontier):
                prompt = (
                    f"Problem: {problem}\nSteps so far:\n{state or '(none)'}\n\n"
                    f"Propose {self.k} different possible next steps, one per line, numbered."
                )
                msgs = [self._sys("deduction"), {"role": "user", "content": prompt}]
                t = self.turn(f"tot{s}.{j}/propose", "deduction", msgs, parent, _ctx(msgs, {}), step=s)
                for line in numbered_items(t.reply or "", self.k) or [(t.reply or "").strip()[:200]]:
                    cands.append((state + line + "\n", t.id))
            scored = []
            for c, (state, parent) in enumerate(cands):
                score, node = self._value(problem, state, f"tot{s}.c{c}", parent)
                scored.append((score, c, state, node))
            scored.sort(key=lambda x: (-x[0], x[1]))  # greedy, ties by proposal order
            frontier = [(st, node) for _, _, st, node in scored[: self.b]]
        best_state, parent = frontier[0]
        msgs = [
            self._sys("integration"),
            {
                "role": "user",
                "content": f"Problem: {problem}\nSteps:\n{best_state}\nGive the final answer.{self.cfg.answer_hint}",
            },
        ]
        t = self.turn("tot/answer", "integration", msgs, parent, _ctx(msgs, {}))
        res = self.checker(t.reply or "") if self.checker else Check(None, "not verified")
        self.store.annotate(
            t, check={"by": "checker" if self.checker else "none", "ok": res.ok, "feedback": res.feedback}
        )
        self._note_best(t, res)
        return t, res

    def _value(self, problem: str, state: str, path: str, parent: str) -> tuple[float, str]:
        """(value, the turn the state continues from: its value turn, or its proposal when a checker decided)."""
        if self.checker is not None:
            res = self.checker(state)
            if res.ok is not None:
                return (20.0 if res.ok else 0.001), parent
        msgs = [
            self._sys("verification"),
            {
                "role": "user",
                "content": f"Problem: {problem}\nPartial solution:\n{state}\n"
                "Can this partial solution reach a correct answer? Answer one word: sure, likely or impossible.",
            },
        ]
        t = self.turn(f"{path}/value", "verification", msgs, parent, _ctx(msgs, {}))
        low = (t.reply or "").lower()
        score = 20.0 if "sure" in low else 0.001 if "impossible" in low else 1.0
        self.store.annotate(t, value=score)
        return score, t.id
