"""Residual-stream capture: chosen layers x chosen token positions for a whole data set, streamed to disk.

Works with the native engine and with any transformers model (`output_hidden_states`). Activations go to
safetensors shards (one tensor per layer, [rows, positions, hidden]) written atomically, so a 7B model's
activations never have to fit in memory, a killed run resumes at the first missing shard, and readers
memory-map one layer at a time. Layer indices follow the Hugging Face convention: 0 is the embedding
output, i is block i's output, and the last one is after the final norm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lmlab.core.errors import LmlabError
from lmlab.core.model import Transformer
from lmlab.core.paths import atomic_write_text

HiddenFn = Callable[[Tensor, list[int]], Sequence[Tensor]]
"""fn(ids [B, T] right-padded, lengths) -> hidden states [B, T, H] for layers 0..L (HF convention)."""


def native_hidden_fn(model: Transformer, hooks: dict[int, Callable[[Tensor], Tensor]] | None = None) -> HiddenFn:
    """Hidden states from the native engine; right padding is harmless because attention is causal."""

    def run(ids: Tensor, lengths: list[int]) -> Sequence[Tensor]:
        cache = model.new_cache(ids.shape[0], ids.shape[1])
        out = model(ids, cache, num_tokens=lengths, output_hidden_states=True, logits="none", hooks=hooks)
        return out.hidden_states

    return run


def hf_hidden_fn(model: torch.nn.Module) -> HiddenFn:
    """Hidden states from a transformers model; calls its base model so no [B, T, vocab] logits are built."""
    base = getattr(model, "base_model", model)

    def run(ids: Tensor, lengths: list[int]) -> Sequence[Tensor]:
        mask = (
            torch.arange(ids.shape[1], device=ids.device)[None, :] < torch.tensor(lengths, device=ids.device)[:, None]
        ).long()
        return base(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states

    return run


@dataclass
class ActivationStore:
    """A capture directory: meta.json plus shard-NNNNN.safetensors holding `layer.{l}` [rows, P, H]."""

    root: Path
    layers: list[int]
    position_names: list[str]
    rows: int
    shard_rows: int
    fingerprint: str
    hidden: int | None = None
    dtype: str = "float32"

    @property
    def num_shards(self) -> int:
        return -(-self.rows // self.shard_rows)

    def shard_path(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.safetensors"

    def done(self) -> list[bool]:
        return [self.shard_path(i).exists() for i in range(self.num_shards)]

    def complete(self) -> bool:
        return all(self.done())

    def save_meta(self) -> None:
        atomic_write_text(self.root / "meta.json", json.dumps(self.__dict__ | {"root": None}, indent=1))

    @classmethod
    def open(cls, root: str | Path) -> ActivationStore:
        root = Path(root)
        meta = root / "meta.json"
        if not meta.exists():
            raise LmlabError(f"{root}: not an activation store (no meta.json)", hint="run the capture first")
        d = json.loads(meta.read_text())
        d["root"] = root
        return cls(**d)

    def layer(self, layer: int, position: int | None = None) -> np.ndarray:
        """float32 activations of one layer, [rows, P, H] (or [rows, H] for one position), shard by shard."""
        from safetensors import safe_open

        if layer not in self.layers:
            raise LmlabError(f"layer {layer} was not captured", hint=f"captured layers: {self.layers}")
        if not self.complete():
            raise LmlabError(
                f"{self.root}: capture incomplete ({sum(self.done())}/{self.num_shards} shards)",
                hint="rerun the capture; it resumes",
            )
        parts = []
        for i in range(self.num_shards):
            with safe_open(str(self.shard_path(i)), framework="np") as f:
                sl = f.get_slice(f"layer.{layer}")
                parts.append(sl[:, position] if position is not None else sl[:])
        return np.concatenate(parts).astype(np.float32, copy=False)


def _batches(n: int, size: int) -> Iterator[range]:
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


def capture(
    fn: HiddenFn,
    token_ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    root: str | Path,
    *,
    position_names: Sequence[str] | None = None,
    fingerprint: str = "",
    batch_size: int = 32,
    shard_rows: int = 512,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> ActivationStore:
    """Capture `layers` at `positions[row]` (P token indices per row) for every row, into shards under `root`.

    Resumable: shards already on disk (same fingerprint) are skipped. A different fingerprint in `root`
    is an error rather than a silent mix of two captures.
    """
    root = Path(root)
    n_pos = {len(p) for p in positions}
    if len(token_ids) != len(positions) or len(n_pos) != 1:
        raise LmlabError("positions must give the same number of token indices for every row")
    P = n_pos.pop()
    for r, (ids, pos) in enumerate(zip(token_ids, positions)):
        if not ids or any(not 0 <= q < len(ids) for q in pos):
            raise LmlabError(
                f"row {r}: positions {list(pos)} outside its {len(ids)} tokens",
                hint="positions index the row's own tokens",
            )
    names = list(position_names) if position_names is not None else [str(i) for i in range(P)]
    store = ActivationStore(
        root,
        sorted(set(int(l) for l in layers)),
        names,
        len(token_ids),
        shard_rows,
        fingerprint,
        dtype=str(dtype).removeprefix("torch."),
    )
    if (root / "meta.json").exists():
        old = ActivationStore.open(root)
        if (old.fingerprint, old.layers, old.rows, old.shard_rows, old.position_names) != (
            fingerprint,
            store.layers,
            store.rows,
            shard_rows,
            names,
        ):
            raise LmlabError(
                f"{root}: holds a different capture (fingerprint {old.fingerprint!r})",
                hint="use another output directory or delete this one",
            )
        store.hidden = old.hidden
    root.mkdir(parents=True, exist_ok=True)
    store.save_meta()
    done = store.done()
    for i in range(store.num_shards):
        if done[i]:
            continue
        rows = range(i * shard_rows, min(store.rows, (i + 1) * shard_rows))
        acts = {l: [] for l in store.layers}
        for br in _batches(len(rows), batch_size):
            idx = [rows[j] for j in br]
            batch_acts = capture_batch(
                fn, [token_ids[r] for r in idx], [positions[r] for r in idx], store.layers, device
            )
            for l, a in batch_acts.items():
                acts[l].append(a.to("cpu", dtype))
        tensors = {f"layer.{l}": torch.cat(v).contiguous() for l, v in acts.items()}
        if store.hidden is None:
            store.hidden = int(next(iter(tensors.values())).shape[-1])
            store.save_meta()
        _atomic_save(tensors, store.shard_path(i))
        if progress is not None:
            progress(rows.stop, store.rows)
    return store


@torch.inference_mode()
def capture_batch(
    fn: HiddenFn,
    token_ids: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    device: torch.device | str = "cpu",
) -> dict[int, Tensor]:
    """One forward pass over right-padded rows -> {layer: [B, P, H]} gathered at each row's positions."""
    lengths = [len(x) for x in token_ids]
    T = max(lengths)
    ids = torch.tensor([list(x) + [0] * (T - len(x)) for x in token_ids], device=device)
    hidden = fn(ids, lengths)
    if max(layers) >= len(hidden) or min(layers) < 0:
        raise LmlabError(
            f"layer {max(layers)} out of range: the model has hidden states 0..{len(hidden) - 1}",
            hint="0 = embeddings, L = last layer",
        )
    pos = torch.tensor([list(p) for p in positions], device=hidden[0].device)
    rows = torch.arange(len(lengths), device=pos.device)[:, None]
    return {l: hidden[l][rows, pos] for l in layers}


def _atomic_save(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
