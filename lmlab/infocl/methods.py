"""Methods as sets of switchable components, and the hyper-parameters of the official code.

A method name is `finetune`, `joint`, `derpp`, `infocl`, or `er` followed by `+component` for any of
`kmeans` (KMeans memory selection), `fscl` (fast-slow contrastive, stage 1), `cpcl` (current-past contrastive on
the memory, stage 2), `adv` (FreeLB memory augmentation, stage 2), and any method may add `+ncm` (nearest-class-mean
evaluation). `infocl` = `er+kmeans+fscl+cpcl+adv`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.errors import LmlabError

COMPONENTS = ("kmeans", "fscl", "cpcl", "adv", "ncm")


@dataclass(frozen=True)
class Method:
    name: str
    memory: bool = True  # keep memory_size exemplars per class
    stage2: bool = True  # train on the memory after each task (from task 2 on): InfoCL's stage 2
    joint: bool = False  # train on all seen classes' data (upper bound)
    derpp: bool = False  # DER++: replay memory logits (MSE) and labels alongside the current task
    kmeans: bool = False
    fscl: bool = False
    cpcl: bool = False
    adv: bool = False
    ncm: bool = False


BASE = {
    "finetune": Method("finetune", memory=False, stage2=False),
    "joint": Method("joint", memory=False, stage2=False, joint=True),
    "er": Method("er"),
    "derpp": Method("derpp", stage2=False, derpp=True),
    "infocl": Method("infocl", kmeans=True, fscl=True, cpcl=True, adv=True),
}


def parse_method(name: str) -> Method:
    """`er+fscl`, `infocl+ncm`, `derpp+kmeans` ...; unknown names and components are one-line errors."""
    base, *parts = name.strip().lower().split("+")
    if base not in BASE:
        raise LmlabError(
            f"--method {name!r}: unknown method {base!r}",
            hint=f"choose from {', '.join(BASE)}, optionally +{'/+'.join(COMPONENTS)} (e.g. er+fscl)",
        )
    m = BASE[base]
    for p in parts:
        if p not in COMPONENTS:
            raise LmlabError(f"--method {name!r}: unknown component {p!r}", hint=f"components: {', '.join(COMPONENTS)}")
        if p in ("cpcl", "adv") and not m.stage2:
            raise LmlabError(
                f"--method {name!r}: {p} acts on InfoCL's memory stage, which {base} has not", hint="use er+" + p
            )
        if p == "kmeans" and not m.memory:
            raise LmlabError(f"--method {name!r}: {base} keeps no memory to select", hint="use er+kmeans")
        m = replace(m, **{p: True})
    return replace(m, name=name.strip().lower())


@dataclass(frozen=True)
class Hyper:
    """Defaults = InfoCL configs/default.yaml (batch 16 for HWU64, 32 otherwise; set by the benchmark)."""

    batch: int = 32
    eval_batch: int = 64
    stage1_epochs: int = 12
    stage2_epochs: int = 12
    encoder_lr: float = 1e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 2  # linear from 0 over 2 epochs, then constant (moco / new_old / adversarial stages)
    grad_clip: float = 10.0
    memory_size: int = 10
    ema_decay: float = 0.99
    queue_size: int = 512
    moco_lambda: float = 0.05
    tau: float = 0.05
    cp_lambda: float = 0.05
    adv_k: int = 2
    adv_lr: float = 0.1
    adv_max_norm: float = 0.3
    dropout: float = 0.5  # classifier_dropout
    proj_dropout: float = 0.1
    derpp_alpha: float = 0.5  # DER++ (Buzzega et al. 2020): logit-MSE weight
    derpp_beta: float = 0.5  # and memory-CE weight
    seed: int = 0
