"""A tiny Llama + BPE tokenizer, briefly trained on the synthetic world (it writes lines, rarely right answers),
saved as an HF checkpoint: a fast stand-in policy/PRM for mechanics tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    from lmlab.core.config import ModelConfig
    from lmlab.core.loader import save_checkpoint
    from lmlab.core.model import Transformer
    from lmlab.core.train import train_bpe_tokenizer
    from lmlab.shepherd.data import STEP_TAG
    from lmlab.shepherd.policy import prompt_text, solution_steps
    from lmlab.shepherd.world import make_problems

    probs = make_problems(300, seed=1)
    tok = train_bpe_tokenizer(
        (prompt_text(p.question) + "\n".join(solution_steps(p)) + "\n" for p in probs),
        400,
        ["<|endoftext|>", "<|pad|>", STEP_TAG],
    )
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = Transformer(cfg)
    from lmlab.core.train import TrainConfig, lm_loss, train
    from lmlab.shepherd.policy import lm_batches

    def loss_fn(m, batch):
        ids, tgt = batch
        return lm_loss(m(ids, m.new_cache(*ids.shape), logits="all").logits, tgt)

    train(model, lm_batches(tok, probs, 16, 0), loss_fn, TrainConfig(steps=40, lr=1e-2, warmup=5))
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny(tiny_ckpt):
    from lmlab.core.loader import load_model

    return load_model(str(tiny_ckpt))
