"""MiniLM embeddings: unit vectors, padding-invariant (the attention mask is honoured), semantically ordered."""

import torch

from lmlab.deepeval.similarity import embed


def test_embed_padding_invariant_and_ordered():
    texts = ["A dog runs in the fog.", "A puppy running through mist.", "Stock prices fell sharply on Monday."]
    alone = embed(texts[:1])
    batch = embed(texts + ["a much longer sentence that forces padding of the shorter ones in this batch " * 3])
    assert torch.allclose(batch.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(alone[0], batch[0], atol=1e-5)  # padding must not move an embedding
    assert float(batch[0] @ batch[1]) > float(batch[0] @ batch[2]) + 0.2


def test_embed_length_sorted_batches_keep_input_order():
    """Batches are formed by token length; the output rows still follow the input order (each equals the text
    embedded alone)."""
    texts = ["a long sentence about a red house on a quiet hill at dawn", "cat", "two words", "rain falls"]
    out = embed(texts, batch_size=2)
    for i, t in enumerate(texts):
        assert torch.allclose(out[i], embed([t])[0], atol=1e-5)
