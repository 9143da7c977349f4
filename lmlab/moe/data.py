"""Corpus for the reproduction: real text present offline on every machine, or the user's own.

Default: the Python standard library's top-level modules (source + docstrings, ~4.7 MB). Users pass a
.txt file, a .jsonl file (one {"text": ...} per line), a directory of .txt/.py/.md files, or `hf:NAME`
(a Hugging Face dataset, via `datasets`, honouring HF_HUB_OFFLINE). Files are split into train/validation
by document (the last 5 % of documents, in sorted order, are held out), so no text is shared.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

from ..core.data import iter_jsonl
from ..core.errors import LmlabError
from ..core.paths import cache_dir


def stdlib_documents() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f.read_text(errors="replace") for f in sorted(root.glob("*.py"))]


def _jsonl(path: Path) -> list[str]:
    docs = []
    for n, row in iter_jsonl(path, hint='one {"text": ...} object per line'):
        if not isinstance(row.get("text"), str):
            raise LmlabError(f'{path}:{n}: no string field "text"', hint='one {"text": ...} object per line')
        docs.append(row["text"])
    return docs


def load_documents(source: str | None) -> list[str]:
    """Documents of `source` (None: the Python standard library), in a deterministic order."""
    if source is None:
        return stdlib_documents()
    if source.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise LmlabError(
                f"{source}: the `datasets` package is not installed", hint="pip install datasets"
            ) from None
        ds = datasets.load_dataset(source[3:], split="train")
        return [r["text"] for r in ds]
    path = Path(source)
    if path.is_dir():
        files = sorted(f for ext in ("*.txt", "*.py", "*.md") for f in path.rglob(ext))
        docs = [f.read_text(errors="replace") for f in files]
    elif path.suffix == ".jsonl":
        docs = _jsonl(path)
    elif path.is_file():
        docs = [d for d in path.read_text(errors="replace").split("\n\n") if d.strip()]
    else:
        raise LmlabError(f"{source}: no such file or directory", hint="pass a .txt/.jsonl file, a directory or hf:NAME")
    if len(docs) < 2:
        raise LmlabError(f"{source}: need at least 2 documents (train + validation), found {len(docs)}")
    return docs


def tokenized_corpus(source: str | None, vocab_size: int) -> tuple[Tensor, Tensor, object]:
    """(train ids, validation ids, tokenizer); BPE trained on the train split only, cached by content hash."""
    from transformers import PreTrainedTokenizerFast

    from ..core.train import train_bpe_tokenizer

    docs = load_documents(source)
    n_val = max(1, len(docs) // 20)
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    key = hashlib.sha256(("\0".join(docs) + f"|{vocab_size}").encode()).hexdigest()[:16]
    root = cache_dir("moe", "corpus", key)
    if (root / "ids.pt").exists():
        ids = torch.load(root / "ids.pt")
        return ids["train"], ids["val"], PreTrainedTokenizerFast.from_pretrained(str(root))
    tok = train_bpe_tokenizer(train_docs, vocab_size)
    eos = tok.eos_token_id

    def encode(ds: list[str]) -> Tensor:
        out: list[int] = []
        for ids in tok(ds, add_special_tokens=False)["input_ids"]:
            out += ids + [eos]
        return torch.tensor(out, dtype=torch.int32)

    train, val = encode(train_docs), encode(val_docs)
    tok.save_pretrained(str(root))
    tmp = root / "ids.pt.tmp"
    torch.save({"train": train, "val": val}, tmp)
    tmp.replace(root / "ids.pt")
    return train, val, tok


def batches(ids: Tensor, batch: int, seq_len: int, seed: int):
    """Endless random windows [B, T+1] of `ids` (seeded: every architecture sees the same data per seed)."""
    g = torch.Generator().manual_seed(seed)
    hi = ids.numel() - seq_len - 1
    while True:
        start = torch.randint(0, hi, (batch,), generator=g)
        yield torch.stack([ids[s : s + seq_len + 1] for s in start.tolist()]).long()


def eval_windows(ids: Tensor, seq_len: int, max_windows: int) -> Tensor:
    """Non-overlapping validation windows [W, T+1], evenly spread over the held-out split."""
    n = (ids.numel() - 1) // seq_len
    if n < 1:
        raise LmlabError(
            f"validation split has {ids.numel()} tokens, fewer than seq_len={seq_len}",
            hint="use more text or a shorter --seq-len",
        )
    pick = torch.linspace(0, n - 1, min(n, max_windows)).long()
    return torch.stack([ids[i * seq_len : i * seq_len + seq_len + 1] for i in pick.tolist()]).long()
