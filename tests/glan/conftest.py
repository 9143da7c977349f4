"""A tiny random-weight model with the real SmolLM2 tokenizer: grammar-constrained decoding makes even
random weights produce schema-valid replies, so pipeline mechanics are tested in seconds."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.loader import save_checkpoint
from lmlab.core.model import Transformer


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm_tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        max_position_embeddings=2048,
        eos_token_id=smollm_tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-glan")
    save_checkpoint(Transformer(cfg), smollm_tokenizer, path)
    return str(path)


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from lmlab.core.loader import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2-135m-instruct"))
