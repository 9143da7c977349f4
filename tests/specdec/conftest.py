"""Tiny random models for the statistical tests (vocab 8, so distributions can be enumerated exactly)."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer


def tiny(seed: int, vocab: int = 8, layers: int = 2, hidden: int = 32) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=64,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        model_type="llama",
        bos_token_id=0,
        eos_token_id=None,
    )
    m = Transformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
        for n, p in m.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
    return m.eval()


@pytest.fixture(scope="module")
def tiny_pair():
    return tiny(1), tiny(2)


@pytest.fixture(scope="session")
def make_tiny():
    return tiny


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
