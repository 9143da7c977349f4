"""Training the drafts on the target's own generations: a small draft LM (SpS) and the EAGLE-style head.

Corpus: the target greedily answers held-out Spec-Bench questions (the *last* questions of each category;
the benchmark uses the first ones) and GSM8K training questions; for every position we keep the target's
final normed hidden state and its top-K logits. Both drafts learn the same distillation loss (EAGLE's):
smooth-L1 regression onto the target's hidden state plus cross-entropy against the target's top-K
distribution scored through the frozen LM head restricted to those K rows, which avoids the 49k-row LM
head matmul in every training step (the CPU cost that would otherwise dominate).
Corpus chunks are cached one file per batch, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.engine import SamplingParams, chunked_forward, encode_chat, generate
from ..core.errors import LmlabError
from ..core.loader import LoadedModel, save_checkpoint
from ..core.model import Transformer
from ..core.paths import cache_dir, shared_data
from ..core.train import TrainConfig, train
from .eagle import EagleHead, save_head, target_features

log = logging.getLogger("lmlab.specdec")


@dataclass
class DraftTrainConfig:
    """One config for both drafts; `quick()` is the minutes-scale version used by reproduce --quick."""

    prompts: int = 256
    new_tokens: int = 128
    topk: int = 32  # target logits kept per position for distillation
    steps: int = 800
    batch: int = 8
    window: int = 128
    lr: float = 1e-3
    cls_weight: float = 1.0  # weight of the classification term (EAGLE uses 0.1 with far more data and steps)
    unroll: int = 2  # head passes per step, each reading the previous pass's predictions (see unrolled_head_loss)
    feat_noise: float = 0.1  # EAGLE's uniform input-feature noise, relative to the features' RMS
    draft_layers: tuple[int, ...] = (0, -1)  # target layers that initialise the draft LM
    vocab: int = 8192  # draft-side token subset (frequency-ranked)
    head_layers: int = 1  # decoder layers in the EAGLE head (EAGLE: 1), initialised from the target's last ones
    feature_layers: tuple[int, ...] = ()  # target hidden states the head reads (EAGLE-3 fusion); () = the final one
    self_prompts: int = 768  # extra requests the target writes itself (Magpie), for variety beyond the held-out set
    seed: int = 0

    @staticmethod
    def quick() -> DraftTrainConfig:
        return DraftTrainConfig(prompts=16, new_tokens=64, steps=80, batch=4, window=96, self_prompts=0)

    def key(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if _ADDED.get(k, object()) != v}  # older keys stay valid
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


_ADDED = {
    "self_prompts": 0,
    "head_layers": 1,
    "feature_layers": (),
}  # fields added later, left out of the key at their old behaviour


# ------------------------------------------------------------------------------------------ corpus
def training_questions(n: int) -> list[str]:
    """Held-out Spec-Bench questions (from the end of each category, round-robin), then GSM8K train."""
    by_cat: dict[str, list[str]] = {}
    with open(shared_data("spec_bench", "question.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            by_cat.setdefault(row["category"], []).append(row["turns"][0])
    pools = [list(reversed(v[len(v) // 2 :])) for v in by_cat.values()]
    out: list[str] = []
    while len(out) < n and any(pools):
        for p in pools:
            if p and len(out) < n:
                out.append(p.pop(0))
    if len(out) < n:
        with open(shared_data("gsm8k", "train.jsonl")) as f:
            for line in f:
                if len(out) >= n:
                    break
                out.append(json.loads(line)["question"])
    return out


def self_written_questions(lm: LoadedModel, n: int, seed: int, folder: Path, batch: int = 16) -> list[str]:
    """n user requests written by the target itself (Magpie, Xu et al. 2024): given the chat template only up
    to the start of a user turn, an instruct model writes a plausible request. Sampled (T = 1, top-p 0.95),
    deduplicated, cached in `folder`. Why: 480 Spec-Bench questions are too few; drafts trained on their
    answers alone memorise them (held-out top-1 0.24 against 0.65 on training batches)."""
    path = folder / f"self-questions-{n}-{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    tok = lm.tokenizer
    marker = "\x00"
    text = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=False)
    prefix = tok(text[: text.index(marker)], add_special_tokens=False).input_ids
    out: list[str] = []
    seen: set[str] = set()
    rnd = seed
    while len(out) < n:
        log.warning("specdec corpus: self-written requests %d of %d", len(out), n)
        gens = generate(
            lm.model, tok, [prefix] * batch, SamplingParams(max_new_tokens=64, temperature=1.0, top_p=0.95, seed=rnd)
        )
        rnd += 1
        for g in gens:
            q = g.text.strip()
            if g.finish_reason == "stop" and len(q.split()) >= 4 and q not in seen:
                seen.add(q)
                out.append(q)
    out = out[:n]
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=0))
    os.replace(tmp, path)
    return out


def _target_id(lm: LoadedModel) -> str:
    return f"{Path(lm.path).name}-{hashlib.sha256(str(Path(lm.path).resolve()).encode()).hexdigest()[:8]}"


def _corpus_dir(lm: LoadedModel, cfg: DraftTrainConfig) -> Path:
    dt = str(lm.model.dtype).removeprefix("torch.")
    # self-written questions are sampled with cfg.seed, so each seed is its own corpus (seed 0 keeps its old name)
    extra = f"-self{cfg.self_prompts}" + (f"-s{cfg.seed}" if cfg.seed else "") if cfg.self_prompts else ""
    return cache_dir("specdec", "corpus", f"{_target_id(lm)}-{cfg.prompts}-{cfg.new_tokens}-{cfg.topk}-{dt}{extra}")


def build_corpus(lm: LoadedModel, cfg: DraftTrainConfig, batch: int = 16) -> list[dict[str, Tensor]]:
    """Target generations with per-position features and top-K logits, cached in chunks (resumable).

    Generated in the target's own dtype (greedy bf16 and fp32 continuations differ), batched because a
    16-row decode step costs little more than a 1-row one on a memory-bound CPU."""
    folder = _corpus_dir(lm, cfg)
    m, tok = lm.model, lm.tokenizer
    qs = training_questions(cfg.prompts)
    if cfg.self_prompts:
        qs += self_written_questions(lm, cfg.self_prompts, cfg.seed, folder)
    seqs: list[dict[str, Tensor]] = []
    for i in range(0, len(qs), batch):
        path = folder / f"chunk-{i // batch:04d}.pt"
        if not path.exists():
            log.warning("specdec corpus: target generations %d-%d of %d", i, min(i + batch, len(qs)), len(qs))
            prompts = [encode_chat(tok, [{"role": "user", "content": q}]) for q in qs[i : i + batch]]
            gens = generate(m, tok, prompts, SamplingParams(max_new_tokens=cfg.new_tokens))
            chunk = [_features(m, p + g.token_ids, cfg.topk) for p, g in zip(prompts, gens)]
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            torch.save(chunk, tmp)
            os.replace(tmp, path)
        seqs += torch.load(path)
    return seqs


@torch.inference_mode()
def _features(m: Transformer, ids: list[int], topk: int) -> dict[str, Tensor]:
    out = chunked_forward(m, torch.tensor([ids], device=m.device), m.new_cache(1, len(ids)), logits="none")
    h = out.last_hidden[0]
    val, idx = m.lm_head(h).float().topk(topk, -1)
    return {"ids": torch.tensor(ids), "feat": h.float().cpu(), "top_idx": idx.int().cpu(), "top_val": val.cpu()}


@torch.inference_mode()
def add_layer_features(lm: LoadedModel, cfg: DraftTrainConfig, seqs: list[dict[str, Tensor]]) -> None:
    """s["layers"]: the target's hidden states `cfg.feature_layers` concatenated, per position (EAGLE-3's fused
    input), recomputed by one prefill per sequence and cached beside the corpus."""
    path = _corpus_dir(lm, cfg) / f"layers-{'-'.join(map(str, cfg.feature_layers))}.pt"
    if path.exists():
        feats = torch.load(path)
    else:
        m, feats = lm.model, []
        for i, s in enumerate(seqs):
            if i % 64 == 0:
                log.warning(
                    "specdec corpus: hidden states %s, sequence %d of %d", list(cfg.feature_layers), i, len(seqs)
                )
            ids = s["ids"].tolist()
            out = chunked_forward(
                m,
                torch.tensor([ids], device=m.device),
                m.new_cache(1, len(ids)),
                logits="none",
                output_hidden_states=True,
            )
            feats.append(target_features(out, cfg.feature_layers)[0].float().cpu())
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(feats, tmp)
        os.replace(tmp, path)
    for s, f in zip(seqs, feats):
        s["layers"] = f


def draft_vocab(seqs: list[dict[str, Tensor]], size: int, vocab_size: int) -> Tensor:
    """Frequency-ranked token subset: tokens the target produced, most frequent first, then the lowest ids
    (byte-level BPE assigns low ids to early, i.e. frequent, merges)."""
    counts = Counter()
    for s in seqs:
        counts.update(s["ids"].tolist())
        counts.update(s["top_idx"][:, :4].flatten().tolist())
    seen = [t for t, _ in counts.most_common(size)]
    rest = [t for t in range(vocab_size) if t not in set(seen)][: max(0, size - len(seen))]
    return torch.tensor(sorted(seen + rest))


# ------------------------------------------------------------------------------------------ loss
def distill_loss(
    h: Tensor, feat: Tensor, top_idx: Tensor, top_val: Tensor, lm_head: nn.Linear, vocab: Tensor, cls_weight: float
) -> tuple[Tensor, dict[str, float]]:
    """EAGLE's loss: smooth-L1 onto the target feature + cls_weight * cross-entropy of the draft's
    distribution over its token subset `vocab` against the target's top-K distribution (mass outside the
    subset dropped). Scoring the subset, not the 49k vocabulary, is what makes CPU training fast, and it
    is exactly the distribution the draft proposes from at inference."""
    reg = F.smooth_l1_loss(h.float(), feat)
    logits = F.linear(h, lm_head.weight[vocab].to(h.dtype)).float()  # [B, T, S]
    pos = torch.full((lm_head.weight.shape[0],), -1, dtype=torch.long, device=h.device)
    pos[vocab] = torch.arange(vocab.numel(), device=h.device)
    where = pos[top_idx.long()]  # [B, T, K] subset index of each target top-K token, -1 if absent
    tp = top_val.softmax(-1) * (where >= 0)
    target = torch.zeros_like(logits).scatter_add_(-1, where.clamp_min(0), tp)
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-9)
    ce = -(target * logits.log_softmax(-1)).sum(-1).mean()
    top1 = (logits.argmax(-1) == where[..., 0]).float().mean()  # top_idx is sorted: 0 is the target's argmax
    return reg + cls_weight * ce, {"reg": reg.item(), "ce": ce.item(), "top1": top1.item()}


def _windows(seqs: list[dict[str, Tensor]], cfg: DraftTrainConfig, shift: int, device) -> Iterator[dict[str, Tensor]]:
    """Random windows; shift=1 pairs position t's input with position t+1's targets (the head's layout)."""
    rng = random.Random(cfg.seed)
    W = cfg.window
    while True:
        rows = [s for s in (rng.choice(seqs) for _ in range(cfg.batch))]
        Lmin = min(len(s["ids"]) for s in rows) - shift
        W_ = min(W, Lmin)
        out: dict[str, list[Tensor]] = {"ids": [], "in_feat": [], "feat": [], "top_idx": [], "top_val": []}
        for s in rows:
            a = rng.randrange(0, len(s["ids"]) - shift - W_ + 1)
            t = slice(a + shift, a + shift + W_)
            out["ids"].append(s["ids"][t] if shift else s["ids"][a : a + W_])
            out["in_feat"].append(s["layers" if "layers" in s else "feat"][a : a + W_])
            out["feat"].append(s["feat"][t])
            out["top_idx"].append(s["top_idx"][t])
            out["top_val"].append(s["top_val"][t])
        yield {k: torch.stack(v).to(device) for k, v in out.items()}


def split_heldout(
    seqs: list[dict[str, Tensor]], every: int = 16
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """(train, held-out): every `every`-th sequence (whole answers, so no window of a held-out answer is seen)."""
    return [s for i, s in enumerate(seqs) if i % every], [s for i, s in enumerate(seqs) if i % every == 0]


@torch.no_grad()
def heldout_metrics(
    model: nn.Module,
    loss_fn,
    seqs: list[dict[str, Tensor]],
    cfg: DraftTrainConfig,
    shift: int,
    device,
    batches: int = 16,
) -> dict[str, float]:
    """Mean training metrics (top-1 agreement with the target, ...) on held-out answers. Training-batch top-1
    overstates what a draft does on new prompts: a 100k-token corpus is memorised within a few epochs."""
    model.eval()
    it = _windows(seqs, replace(cfg, seed=cfg.seed + 1), shift, device)
    rows = [loss_fn(model, next(it))[1] for _ in range(batches)]
    model.train()
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


# ------------------------------------------------------------------------------------------ models
def init_draft_lm(target: Transformer, layers: tuple[int, ...]) -> Transformer:
    """A shallow copy of the target: its embedding/LM head (frozen), chosen layers, final norm."""
    n = target.cfg.num_layers
    picks = [l % n for l in layers]
    draft = Transformer(replace(target.cfg, num_layers=len(picks))).to(device=target.device, dtype=torch.float32)
    sd = {k: v for k, v in target.state_dict().items() if not k.startswith("layers.")}
    for j, l in enumerate(picks):
        sd.update(
            {
                k.replace(f"layers.{l}.", f"layers.{j}.", 1): v
                for k, v in target.state_dict().items()
                if k.startswith(f"layers.{l}.")
            }
        )
    draft.load_state_dict(sd)
    draft.embed.weight.requires_grad_(False)
    return draft


def _restrict_lm_head(draft: Transformer, vocab: Tensor) -> Transformer:
    """Untie the LM head and zero its rows outside the trained subset: those logits were never trained,
    and zero keeps them below the subset's winners, so any consumer of the checkpoint (transformers'
    assisted generation included) proposes exactly what lmlab's subset scoring proposes under greedy."""
    out = Transformer(replace(draft.cfg, tie_word_embeddings=False)).to(device=draft.device, dtype=draft.dtype)
    out.load_state_dict(draft.state_dict(), strict=False)
    w = torch.zeros_like(draft.lm_head.weight)
    w[vocab] = draft.lm_head.weight[vocab]
    out.lm_head.weight = nn.Parameter(w)
    return out


def train_draft_lm(lm: LoadedModel, cfg: DraftTrainConfig, out: Path, log_fn=None) -> Path:
    """Distil a shallow draft LM from the target's generations; saved as an ordinary HF checkpoint."""
    seqs = build_corpus(lm, cfg)
    draft = init_draft_lm(lm.model, cfg.draft_layers)
    vocab = draft_vocab(seqs, cfg.vocab, lm.config.vocab_size)
    vocab_d = vocab.to(lm.model.device)

    def loss_fn(model: Transformer, b: dict[str, Tensor]):
        cache = model.new_cache(b["ids"].shape[0], b["ids"].shape[1])
        h = model(b["ids"], cache, logits="none").last_hidden
        return distill_loss(h, b["feat"], b["top_idx"], b["top_val"], model.lm_head, vocab_d, cfg.cls_weight)

    train_seqs, held = split_heldout(seqs)
    hist = train(
        draft,
        _windows(train_seqs, cfg, 0, lm.model.device),
        loss_fn,
        TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(30, cfg.steps // 5), seed=cfg.seed, log_every=50),
        log=log_fn,
    )
    heldout = heldout_metrics(draft, loss_fn, held, cfg, 0, lm.model.device)
    log.warning(
        "specdec draft LM: held-out top-1 %.3f (last training batch %.3f)",
        heldout["top1"],
        hist[-1].get("top1", float("nan")),
    )
    save_checkpoint(_restrict_lm_head(draft, vocab), lm.tokenizer, out)
    from safetensors.torch import save_file

    save_file({"vocab": vocab}, str(out / "specdec_vocab.safetensors"))
    (out / "specdec_train.json").write_text(
        json.dumps(
            {"target": str(lm.path), "config": cfg.__dict__, "final": hist[-1], "heldout": heldout},
            indent=2,
            default=str,
        )
    )
    return out


def unrolled_head_loss(
    head: EagleHead,
    b: dict[str, Tensor],
    embed: nn.Embedding,
    lm_head: nn.Linear,
    vocab: Tensor,
    cfg: DraftTrainConfig,
    rms: float,
) -> tuple[Tensor, dict[str, float]]:
    """`cfg.unroll` passes over one window. Pass 1 reads the target's features (plus EAGLE's uniform noise);
    pass k+1 reads, at a random half of the positions, the feature pass k *predicted* there. At inference
    every draft level after the first reads the head's own predictions, so a head trained only on true
    features (pass 1) compounds its errors with depth; this is a cheap form of EAGLE-3's training-time test."""
    true = head.fuse_in(b["in_feat"])  # the target's features in the head's space (EAGLE-3: fused layers)
    feats, total, logs = true, 0.0, {}
    B, T = b["ids"].shape
    gen = torch.Generator(device=feats.device).manual_seed(int(b["ids"].sum()))
    for k in range(cfg.unroll):
        noise = (torch.rand(feats.shape, generator=gen, device=feats.device) * 2 - 1) * (cfg.feat_noise * rms)
        h = head(feats + noise, b["ids"], embed, head.body.new_cache(B, T))
        loss, m = distill_loss(h, b["feat"], b["top_idx"], b["top_val"], lm_head, vocab, cfg.cls_weight)
        total = total + loss / cfg.unroll
        logs.update(m if k == 0 else {f"top1_{k + 1}": m["top1"]})
        pred = torch.cat([feats[:, :1], h[:, :-1].detach()], 1)  # position t+1 reads what was predicted at t
        own = torch.rand(B, T, 1, generator=gen, device=feats.device) < 0.5
        feats = torch.where(own, pred, true)
    return total, logs


def train_eagle_head(lm: LoadedModel, cfg: DraftTrainConfig, out: Path, log_fn=None) -> Path:
    """Train the EAGLE-style head on the target's features (target frozen)."""
    target = lm.model
    if any(not 0 <= i <= target.cfg.num_layers for i in cfg.feature_layers):
        raise LmlabError(
            f"feature_layers {list(cfg.feature_layers)}: the target has hidden states 0..{target.cfg.num_layers}",
            hint=f"0 = embeddings, i = output of layer i, {target.cfg.num_layers} = the final normed state",
        )
    seqs = build_corpus(lm, cfg)
    vocab = draft_vocab(seqs, cfg.vocab, lm.config.vocab_size)
    vocab_d = vocab.to(target.device)
    if cfg.feature_layers:
        add_layer_features(lm, cfg, seqs)
    head = EagleHead(target.cfg, vocab, cfg.head_layers, cfg.feature_layers).to(
        device=target.device, dtype=torch.float32
    )
    if head.fuse is not None:  # start as plain EAGLE where the final hidden state is among the inputs: it only gains
        H, final = target.cfg.hidden_size, target.cfg.num_layers
        with torch.no_grad():
            head.fuse.weight.normal_(0, 0.02 / len(cfg.feature_layers) ** 0.5)
            if final in cfg.feature_layers:
                j = cfg.feature_layers.index(final)
                head.fuse.weight[:, j * H : (j + 1) * H] = torch.eye(H)
    n = target.cfg.num_layers
    for j, layer in enumerate(head.body.layers):  # the target's last head_layers layers, in order
        src = f"layers.{n - cfg.head_layers + j}."
        layer.load_state_dict({k.removeprefix(src): v for k, v in target.state_dict().items() if k.startswith(src)})
    head.body.norm.load_state_dict(target.norm.state_dict())
    embed = nn.Embedding.from_pretrained(target.embed.weight.detach().float(), freeze=True)
    lm_head = nn.Linear(target.cfg.hidden_size, target.cfg.vocab_size, bias=False).to(target.device)
    lm_head.weight = nn.Parameter(
        embed.weight if target.cfg.tie_word_embeddings else target.lm_head.weight.detach().float(), requires_grad=False
    )

    rms = float(torch.cat([s["feat"] for s in seqs[:64]]).pow(2).mean().sqrt())

    def loss_fn(model: EagleHead, b: dict[str, Tensor]):
        return unrolled_head_loss(model, b, embed, lm_head, vocab_d, cfg, rms)

    train_seqs, held = split_heldout(seqs)
    hist = train(
        head,
        _windows(train_seqs, cfg, 1, target.device),
        loss_fn,
        TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=min(30, cfg.steps // 5), seed=cfg.seed, log_every=50),
        log=log_fn,
    )
    clean = replace(cfg, feat_noise=0.0)  # evaluate without the training-time feature noise
    heldout = heldout_metrics(
        head, lambda m, b: unrolled_head_loss(m, b, embed, lm_head, vocab_d, clean, rms), held, cfg, 1, target.device
    )
    log.warning(
        "specdec EAGLE head: held-out top-1 %.3f at depth 1, %.3f at depth 2 (last training batch %.3f)",
        heldout["top1"],
        heldout.get("top1_2", float("nan")),
        hist[-1].get("top1", float("nan")),
    )
    return save_head(head, out, {"target": str(lm.path), "config": cfg.__dict__, "final": hist[-1], "heldout": heldout})
