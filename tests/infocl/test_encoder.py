"""Encoders: the frozen-lower / trainable-top split equals the whole encoder; entity-marker pooling; caching."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.errors import LmlabError
from lmlab.infocl.data import ENTITY_MARKERS
from lmlab.infocl.encoder import UpperEncoder, cached_features, encode_lower, load_encoder, pool

TEXTS = ["hello world", "book me a flight to paris tomorrow morning please", "wake me up at seven"]


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("all-minilm-l6-v2")


def test_split_encoder_equals_whole_encoder(minilm):
    tok, model = minilm
    whole = encode_lower(tok, model, TEXTS, 0).x
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():  # reference: the plain HF forward with mean pooling (sentence-transformers' pooling)
        ref = pool(model(**enc).last_hidden_state, enc["attention_mask"], None)
    assert torch.allclose(whole, ref, atol=1e-5)
    for k in (1, 2):
        low = encode_lower(tok, model, TEXTS, k)
        assert low.x.dim() == 3
        top = UpperEncoder(model, k)
        with torch.no_grad():
            got = top(low.x, low.mask, None)
        assert torch.allclose(got, whole, atol=1e-4), k
        assert sum(p.numel() for p in top.parameters() if p.requires_grad) > 0
    assert not torch.allclose(whole[0], whole[1], atol=1e-2)  # control: different sentences differ


def test_entity_marker_pooling():
    tok, model = load_encoder("all-minilm-l6-v2", "relation")
    text = "[E11] Paris [E12] is the capital of [E21] France [E22] ."
    feats = encode_lower(tok, model, [text, "x " + text], 0, "relation")
    assert feats.x.shape == (2, 2 * model.config.hidden_size)
    ids = tok([text])["input_ids"][0]
    assert feats.marker_pos[0].tolist() == [ids.index(tok.convert_tokens_to_ids(m)) for m in ENTITY_MARKERS[::2]]
    assert feats.marker_pos[1, 0] == feats.marker_pos[0, 0] + 1  # the extra word shifts the markers
    with pytest.raises(LmlabError, match="lost its entity marker"):
        encode_lower(tok, model, ["word " * 80 + text], 0, "relation", max_len=16)


def test_features_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    a, _ = cached_features("all-minilm-l6-v2", TEXTS, 0)
    files = list((tmp_path / "infocl" / "features").glob("*.pt"))
    assert len(files) == 1
    b, _ = cached_features("all-minilm-l6-v2", TEXTS, 0)
    assert torch.equal(a.x, b.x)
    cached_features("all-minilm-l6-v2", TEXTS[:2], 0)
    assert len(list((tmp_path / "infocl" / "features").glob("*.pt"))) == 2  # other texts, other entry


def test_unknown_encoder_is_one_line_error(tmp_path):
    with pytest.raises(LmlabError, match="cannot load") as e:
        load_encoder(str(tmp_path / "no-such-model"))
    assert "\n" not in str(e.value)
