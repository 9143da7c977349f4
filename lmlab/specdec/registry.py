"""Where trained drafts live (the user cache) and how a method name becomes a drafter for a target."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from ..core import loader
from ..core.errors import LmlabError
from ..core.loader import LoadedModel
from ..core.paths import cache_dir
from .drafters import DraftModel, PromptLookup, quantized_self_draft
from .eagle import EagleDrafter, load_head
from .train import DraftTrainConfig, _target_id

METHODS = ("sps", "pld", "eagle", "eagle_pld", "selfq4", "layerskip")
DRAFT_ALIAS = "smollm2-135m-instruct-draft"


def trained_path(lm: LoadedModel, kind: str, cfg: DraftTrainConfig, dtype: str | None = None) -> Path:
    """Cache folder of a trained draft ('draft' LM or 'eagle' head) for this target, the dtype its corpus
    was generated in (default: the target's) and the training config."""
    dt = dtype or str(lm.model.dtype).removeprefix("torch.")
    return cache_dir("specdec", "drafts") / f"{_target_id(lm)}-{dt}-{kind}-{cfg.key()}"


def find_trained(lm: LoadedModel, kind: str) -> Path | None:
    """The trained draft to use for this target: trained in the target's dtype first, else in the other dtype
    (bf16 and fp32 features differ only by rounding); within a dtype the default config, else the newest other
    full-size one (trained with another config or before the defaults changed), else the quick one; else None."""
    own = str(lm.model.dtype).removeprefix("torch.")
    folder = cache_dir("specdec", "drafts")
    for dt in (own, *(d for d in ("bfloat16", "float32") if d != own)):
        full, quick = (
            trained_path(lm, kind, DraftTrainConfig(), dt),
            trained_path(lm, kind, DraftTrainConfig.quick(), dt),
        )
        if full.is_dir():
            return full
        prefix = full.name[: -len(DraftTrainConfig().key())]
        others = [p for p in folder.glob(prefix + "*") if p.is_dir() and p != quick and ".tmp" not in p.name]
        if others:
            return max(others, key=lambda p: p.stat().st_mtime)
        if quick.is_dir():
            return quick
    return None


def _default_draft() -> Path:
    from ..core.backends import auto_dtype

    # only the target's path and dtype are needed, not the loaded model
    p = find_trained(
        SimpleNamespace(path=loader.resolve(loader.DEFAULT_MODEL), model=SimpleNamespace(dtype=auto_dtype())), "draft"
    )
    if p is None:
        raise LmlabError(
            f"model alias {DRAFT_ALIAS!r} is not trained yet",
            hint="run `lmlab specdec train-draft` (a few minutes on CPU)",
        )
    return p


def register_aliases() -> None:
    """`smollm2-135m-instruct-draft` -> the cached draft LM (an ordinary HF checkpoint)."""
    loader.ALIASES.setdefault(DRAFT_ALIAS, _default_draft)


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """SpS needs identical token ids on both sides; fail early with one line otherwise."""
    a, b = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if a != b or target.config.vocab_size != draft.config.vocab_size:
        diff = len(set(a.items()) ^ set(b.items()))
        raise LmlabError(
            f"draft {draft.name} and target {target.name} use different tokenizers ({len(b)} vs {len(a)} tokens, {diff} differing entries)",
            hint="speculative sampling needs a draft with the target's tokenizer; use --speculative pld or train one with `lmlab specdec train-draft`",
        )


def load_draft(lm: LoadedModel, draft: str | None = None) -> LoadedModel:
    """The draft LM for `lm`: a given alias/path, else the cached one trained for this target."""
    if draft is None:
        p = find_trained(lm, "draft")
        if p is None:
            raise LmlabError(
                f"no draft model trained for {lm.name}",
                hint="run `lmlab specdec train-draft` (or pass a draft checkpoint)",
            )
        draft = str(p)
    d = loader.load_model(draft, dtype=lm.model.dtype, device=str(lm.model.device))
    check_same_tokenizer(lm, d)
    return d


def draft_vocab_of(path: Path):
    """The draft-side token subset saved beside a trained draft (None: score the full vocabulary)."""
    f = Path(path) / "specdec_vocab.safetensors"
    if not f.exists():
        return None
    from safetensors.torch import load_file

    return load_file(str(f))["vocab"]


def make_drafter(lm: LoadedModel, method: str, draft: str | None = None, head: str | None = None, **kw):
    """A drafter for target `lm`: 'pld', 'sps' (draft LM: `draft` alias/path or the cached one) or
    'eagle' (head folder `head` or the cached one), 'eagle_pld' (eagle, but prompt lookup where the context's
    last n-gram recurs), 'selfq4' (the target's own weights quantized to 4 bits as the draft: no training),
    'layerskip' (the target with calibrated layers skipped as the draft: no training, any device and dtype)."""
    if method == "pld":
        return PromptLookup(**kw)
    if method == "layerskip":
        from .layerskip import layerskip_drafter

        return layerskip_drafter(lm.model, lm.tokenizer, **kw)
    if method == "pld":
        return PromptLookup(**kw)
    if method == "sps":
        d = load_draft(lm, draft)
        vocab = draft_vocab_of(d.path)
        return DraftModel(d.model, vocab=None if vocab is None else vocab.to(lm.model.device), **kw)
    if method == "selfq4":
        m = lm.model
        if not (
            m.device.type == "cpu"
            and m.dtype == torch.float32
            and m.cfg.hidden_size % 32 == 0
            and m.cfg.intermediate_size % 32 == 0
        ):
            raise LmlabError(
                "--speculative selfq4 needs an fp32 target on the CPU with layer widths divisible by 32",
                hint="use sps, pld, eagle or eagle_pld here",
            )
        kw.setdefault(
            "gamma_max", 16
        )  # it agrees with the target almost always: long drafts pay (dev prompts: 12 -> 1.82x, 16 -> 1.89x, 24 -> flat)
        return DraftModel(quantized_self_draft(m), vocab=None, stream_bf16=False, shared_cache=True, **kw)
    if method in ("eagle", "eagle_pld"):
        kw.setdefault("lookup", method == "eagle_pld")
        p = Path(head) if head else find_trained(lm, "eagle")
        if p is None:
            raise LmlabError(
                f"no EAGLE head trained for {lm.name}", hint="run `lmlab specdec train-head` (a few minutes on CPU)"
            )
        return EagleDrafter(load_head(p, lm.model), lm.model, **kw)
    raise LmlabError(f"unknown speculative method {method!r}", hint=f"choose from {', '.join(METHODS)}")
