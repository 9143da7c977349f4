"""Capture: native == transformers on the same weights, batching/padding invariance, shards, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.probes import data as D
from lmlab.probes.capture import ActivationStore, capture, capture_batch, hf_hidden_fn, native_hidden_fn


def test_native_and_transformers_agree_with_unpadded_reference(smollm):
    """Batched right-padded capture from both backends equals transformers run on each prompt alone."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(smollm.path), dtype=torch.float32).eval()
    probs = [
        D.Problem(0, 2, 87, 57, "test"),
        D.Problem(1, 6, 123456, 654321, "test"),
        D.Problem(2, 3, 100, 999, "test"),
    ]
    ids, pos = D.encode(smollm.tokenizer, probs)
    layers = [0, 7, 15, 29, 30]
    native = capture_batch(native_hidden_fn(smollm.model), ids, pos, layers)
    hfb = capture_batch(hf_hidden_fn(hf), ids, pos, layers)
    for r, (row, p) in enumerate(zip(ids, pos)):
        with torch.inference_mode():
            ref = hf(torch.tensor([row]), output_hidden_states=True).hidden_states
        for l in layers:
            want = ref[l][0, p]
            scale = want.abs().max()
            assert torch.allclose(native[l][r], want, atol=2e-4 * scale, rtol=0), (r, l)
            assert torch.allclose(hfb[l][r], want, atol=2e-4 * scale, rtol=0), (r, l)


def _rows(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    g = np.random.default_rng(seed)
    ids = [g.integers(3, 64, size=int(g.integers(4, 12))).tolist() for _ in range(n)]
    pos = [[0, len(x) // 2, len(x) - 1] for x in ids]
    return ids, pos


def test_shards_resume_after_crash(tiny, tmp_path):
    ids, pos = _rows(50)
    full = capture(native_hidden_fn(tiny), ids, pos, [0, 1, 2], tmp_path / "ref", batch_size=7, shard_rows=16)
    calls = {"n": 0}

    def crashing(x, lens):
        calls["n"] += 1
        if calls["n"] == 6:  # third shard's first batch (each shard of 16 rows takes 3 batches of <= 7)
            raise KeyboardInterrupt
        return native_hidden_fn(tiny)(x, lens)

    with pytest.raises(KeyboardInterrupt):
        capture(crashing, ids, pos, [0, 1, 2], tmp_path / "run", batch_size=7, shard_rows=16)
    part = ActivationStore.open(tmp_path / "run")
    assert part.done() == [True, False, False, False] and not part.complete()
    with pytest.raises(LmlabError, match="incomplete"):
        part.layer(1)
    calls["n"] = 100
    counted = {"n": 0}

    def counting(x, lens):
        counted["n"] += 1
        return native_hidden_fn(tiny)(x, lens)

    done = capture(counting, ids, pos, [0, 1, 2], tmp_path / "run", batch_size=7, shard_rows=16)
    assert counted["n"] == 3 + 3 + 1  # shards 1, 2 (3 batches each) and the 2-row tail; shard 0 skipped
    for l in (0, 1, 2):
        np.testing.assert_array_equal(done.layer(l), full.layer(l))
        assert done.layer(l).shape == (50, 3, 32)
    np.testing.assert_array_equal(done.layer(2, position=1), full.layer(2)[:, 1])


def test_batch_composition_does_not_change_activations(tiny):
    ids, pos = _rows(9, seed=1)
    together = capture_batch(native_hidden_fn(tiny), ids, pos, [2])[2]
    alone = torch.cat([capture_batch(native_hidden_fn(tiny), [x], [p], [2])[2] for x, p in zip(ids, pos)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_errors(tiny, tmp_path):
    ids, pos = _rows(4)
    with pytest.raises(LmlabError, match="out of range"):
        capture(native_hidden_fn(tiny), ids, pos, [5], tmp_path / "a")
    with pytest.raises(LmlabError, match="row 0: positions"):
        capture(native_hidden_fn(tiny), ids, [[99, 0, 0]] + pos[1:], [1], tmp_path / "b")
    capture(native_hidden_fn(tiny), ids, pos, [1], tmp_path / "c", fingerprint="one")
    with pytest.raises(LmlabError, match="different capture"):
        capture(native_hidden_fn(tiny), ids, pos, [1], tmp_path / "c", fingerprint="two")
    with pytest.raises(LmlabError, match="not captured"):
        ActivationStore.open(tmp_path / "c").layer(0)
