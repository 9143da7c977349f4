"""Training utilities shared by every system that trains (draft models, policies, PRMs, MoE LMs, heads).

`train` is one plain loop over an iterator of batches: AdamW, linear warm-up + cosine decay, gradient
clipping, gradient accumulation, optional periodic evaluation, checkpoint-free by design (callers cache the
final model). It runs unchanged under `accelerate launch` (DDP on gloo/NCCL): the `Accelerator` wraps the
model, optimizer and data, and is a no-op in a single process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 0  # 0: never
    log_every: int = 50
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases and 1-d parameters (standard practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor | tuple[Tensor, dict[str, float]]],
    cfg: TrainConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    log: Callable[[dict[str, float]], None] | None = None,
    accelerator: Any = None,
) -> list[dict[str, float]]:
    """Run cfg.steps optimizer steps. `loss_fn(model, batch)` returns a scalar loss (or (loss, metrics)).

    Pass an `accelerate.Accelerator` to train under DDP; batches should then already be sharded per rank
    (or be an infinite iterator each rank draws from with its own seed).
    """
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    if accelerator is not None:
        model, opt = accelerator.prepare(model, opt)
    model.train()
    it: Iterator[Any] = iter(batches)
    t0 = time.time()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        metrics: dict[str, float] = {}
        total = 0.0
        for _ in range(cfg.grad_accum):
            out = loss_fn(model, next(it))
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            loss = loss / cfg.grad_accum
            if accelerator is not None:
                accelerator.backward(loss)
            else:
                loss.backward()
            total += float(loss.detach())
        if cfg.grad_clip:
            params = model.parameters()
            if accelerator is not None:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "loss": total, "lr": lr_at(step, cfg), "seconds": time.time() - t0, **metrics}
        if eval_fn is not None and cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            model.eval()
            with torch.no_grad():
                row.update(eval_fn(model))
            model.train()
        cfg.history.append(row)
        if log is not None and (cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps)):
            log(row)
    model.eval()
    return cfg.history


def lm_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy; `targets` are already shifted (targets[t] = input[t+1])."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=ignore_index
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str] | None = None, chat_template: str | None = None
) -> Any:
    """Byte-level BPE trained with `tokenizers`, wrapped as a transformers PreTrainedTokenizerFast
    (so it saves/loads with the checkpoint like any HF tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = special_tokens or ["<|endoftext|>", "<|pad|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token=specials[0], pad_token=specials[1] if len(specials) > 1 else specials[0]
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast
