"""The policy (generator / completer): any causal LM; by default a tiny model lmlab trains on the synthetic world.

Prompt format (plain text, no chat template, so any base or instruct HF causal LM can be swapped in):

    Q: <question>\\nA:\\n<step 1>\\n<step 2>\\n...#### <answer>\\n<eos>

Steps are lines. Token ids are built segment by segment (prompt, then each step line); with a byte-level
BPE whose pre-tokenizer splits at newlines this equals tokenizing the whole text, and it lets annotation cut
a sampled solution at step boundaries by token index.

The tiny policy is trained to a middling greedy accuracy (30-70 %) on purpose: verification needs a policy
that is sometimes wrong. It is cached under cache_dir("shepherd", "policy-<hash of its config>").
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmlab.core.config import ModelConfig
from lmlab.core.engine import SamplingParams, generate
from lmlab.core.loader import ALIASES, LoadedModel, load_model, save_checkpoint
from lmlab.core.model import Transformer
from lmlab.core.paths import cache_dir
from lmlab.core.train import TrainConfig, lm_loss, train, train_bpe_tokenizer

from .data import STEP_TAG, Problem, extract_answer, is_correct
from .world import Difficulty, make_problems

log = logging.getLogger("lmlab.shepherd")
POLICY_ALIAS = "shepherd-policy"


def prompt_text(question: str) -> str:
    return f"Q: {question}\nA:\n"


def encode_prompt(tokenizer: Any, question: str) -> list[int]:
    return tokenizer(prompt_text(question), add_special_tokens=False).input_ids


def encode_steps(tokenizer: Any, steps: list[str]) -> list[list[int]]:
    """Token ids of each step line (newline included)."""
    return [tokenizer(s + "\n", add_special_tokens=False).input_ids for s in steps]


def split_steps(text: str) -> list[str]:
    """A generated solution's steps: its non-empty lines."""
    return [ln.strip() for ln in text.split("\n") if ln.strip()]


def solution_steps(p: Problem) -> list[str]:
    return p.steps + [f"#### {p.answer}"]


# ------------------------------------------------------------------------------------------ tiny policy
@dataclass
class PolicyConfig:
    """Everything that determines the trained policy; its hash names the cache folder."""

    difficulty: Difficulty = field(default_factory=Difficulty)
    vocab_size: int = 640
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 288
    train_problems: int = 20000
    steps: int = 800
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def lm_batches(
    tok: Any, problems: list[Problem], batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches; the loss covers only the solution and EOS (the question is given)."""
    rng = random.Random(seed)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    encoded = []
    for p in problems:
        q = encode_prompt(tok, p.question)
        a = [t for s in encode_steps(tok, solution_steps(p)) for t in s] + [eos]
        encoded.append((q, a))
    while True:
        batch = rng.sample(encoded, batch_size)
        T = max(len(q) + len(a) for q, a in batch) - 1
        ids = torch.full((batch_size, T), pad, dtype=torch.long)
        tgt = torch.full((batch_size, T), -100, dtype=torch.long)
        for i, (q, a) in enumerate(batch):
            seq = torch.tensor(q + a)
            ids[i, : len(seq) - 1] = seq[:-1]
            tgt[i, len(q) - 1 : len(seq) - 1] = seq[len(q) :]
        yield ids, tgt


def train_policy(
    cfg: PolicyConfig | None = None, out: Path | None = None, progress: bool = False, device: str = "cpu"
) -> Path:
    """Train (or find cached) the tiny policy; returns its HF checkpoint directory."""
    cfg = cfg or PolicyConfig()
    out = out or cache_dir("shepherd") / f"policy-{cfg.key()}"
    if (out / "config.json").exists():
        return out
    t0 = time.time()
    problems = make_problems(cfg.train_problems, cfg.seed, cfg.difficulty, "train")
    corpus = (prompt_text(p.question) + "\n".join(solution_steps(p)) + "\n" for p in problems[:4000])
    tok = train_bpe_tokenizer(corpus, cfg.vocab_size, ["<|endoftext|>", "<|pad|>", STEP_TAG])
    heads = cfg.num_heads
    mcfg = ModelConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=cfg.hidden_size // heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        model_type="llama",
        eos_token_id=tok.eos_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg).to(device)

    def loss_fn(m: Transformer, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, tgt = (t.to(device) for t in batch)
        logits = m(ids, m.new_cache(ids.shape[0], ids.shape[1]), logits="all").logits
        return lm_loss(logits, tgt)

    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(100, cfg.steps // 10), seed=cfg.seed, log_every=100)
    show = (
        (lambda r: log.warning("policy step %d loss %.3f (%.0f s)", r["step"], r["loss"], r["seconds"]))
        if progress
        else None
    )
    train(model, lm_batches(tok, problems, cfg.batch_size, cfg.seed), loss_fn, tc, log=show)
    save_checkpoint(model.cpu(), tok, out)
    (out / "lmlab_train.json").write_text(
        json.dumps({"config": asdict(cfg), "seconds": time.time() - t0, "final_loss": tc.history[-1]["loss"]}, indent=2)
    )
    return out


ALIASES[POLICY_ALIAS] = train_policy  # `load_model("shepherd-policy")` trains on first use, then loads the cache


def load_policy(name: str = POLICY_ALIAS, device: str = "cpu") -> LoadedModel:
    return load_model(name, dtype=torch.float32, device=device)


def greedy_accuracy(lm: LoadedModel, problems: list[Problem], max_new_tokens: int = 96, batch: int = 64) -> float:
    """Fraction of problems the policy solves at temperature 0."""
    correct = 0
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        gens = generate(lm.model, lm.tokenizer, [encode_prompt(lm.tokenizer, p.question) for p in chunk], params)
        correct += sum(is_correct(extract_answer(g.text), p.answer) for g, p in zip(gens, chunk))
    return correct / max(1, len(problems))
