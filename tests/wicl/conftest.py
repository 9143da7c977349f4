"""Tiny random transformers models (from configs, offline) and their native twins."""

from __future__ import annotations

import pytest
import torch


def tiny_hf(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=97, max_position_embeddings=128)
    if kind == "llama":
        cfg = tf.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        m = tf.LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        m = tf.Qwen2ForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=128)
        m = tf.GPT2LMHeadModel(cfg)
    elif kind == "opt":
        cfg = tf.OPTConfig(
            hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32, **common
        )
        m = tf.OPTForCausalLM(cfg)
    elif kind == "xglm":
        cfg = tf.XGLMConfig(
            d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, vocab_size=97, max_position_embeddings=128
        )
        m = tf.XGLMForCausalLM(cfg)
    else:
        raise ValueError(kind)
    return m.eval()


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory):
    """(HF LlamaForCausalLM, native Transformer) with the same random weights."""
    from lmlab.core.loader import load_checkpoint_dir

    hf = tiny_hf("llama")
    d = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(d)
    native = load_checkpoint_dir(d, torch.float32)
    return hf, native
