"""A deterministic stand-in LLM for pipeline-mechanics tests: schema-valid JSON derived from the prompt and
seed (so k samples differ), with optional invalid replies (every `bad_every`-th call) and a per-call delay."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time

from lmlab.core.backends import Completion

WORDS = "force energy matrix vector entropy gene market ethics proof graph wave field cell price memory".split()


class ScriptedBackend:
    def __init__(self, name: str = "scripted", bad_every: int = 0, delay: float = 0.0, batch_size: int = 4):
        self.name, self.bad_every, self.delay, self.batch_size = name, bad_every, delay, batch_size
        self.calls = 0

    def _reply(self, prompt, params, schema) -> str:
        text = json.dumps(prompt)
        rng = random.Random(hashlib.sha256(f"{text}|{params.seed}".encode()).hexdigest())
        title = (schema or {}).get("title")
        if title == "SubjectList":
            return json.dumps(
                {
                    "subjects": [
                        {
                            "name": f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} {rng.randint(1, 4)}",
                            "level": rng.choice(["introductory", "advanced"]),
                        }
                        for _ in range(3)
                    ]
                }
            )
        if title == "Syllabus":
            return json.dumps(
                {
                    "sessions": [
                        {"title": f"Session on {rng.choice(WORDS)}", "concepts": rng.sample(WORDS, 3)} for _ in range(3)
                    ]
                }
            )
        if title == "Question":
            concepts = re.findall(r"tests the key concept\(s\) (\[.*?\])", text)
            return json.dumps(
                {
                    "question": f"Homework {rng.randint(0, 10**6)}: explain {concepts[0] if concepts else 'it'} with an example."
                }
            )
        if title == "Answer":
            return json.dumps({"answer": f"Answer {rng.randint(0, 10**6)}: because of {rng.choice(WORDS)}."})
        return json.dumps({"names": [f"{rng.choice(WORDS).title()} Studies {i}" for i in range(3)]})

    def complete(self, prompts, params, json_schema=None):
        out = []
        for p in prompts:
            time.sleep(self.delay)
            self.calls += 1
            bad = self.bad_every and self.calls % self.bad_every == 0
            out.append(Completion("{not json" if bad else self._reply(p, params, json_schema), "stop", 10, 20))
        return out
