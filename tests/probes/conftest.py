"""Tiny native models for the probe tests (built in milliseconds; the embedded 135M model only where HF parity needs it)."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer


def tiny_config(vocab: int = 64, hidden: int = 32, layers: int = 2) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=hidden // 4,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        model_type="llama",
        bos_token_id=1,
        eos_token_id=2,
    )


@pytest.fixture
def tiny() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config()).eval()


@pytest.fixture
def make_config():
    """The tiny config factory, for tests that need other sizes."""
    return tiny_config
