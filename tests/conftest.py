"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1); the embedded model is converted once per cache."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct in float32 (LoadedModel: .model, .tokenizer, .path)."""
    from lmlab.core.loader import load_model

    return load_model("smollm2-135m-instruct", dtype=torch.float32)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
