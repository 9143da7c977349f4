"""InfoCL's network (`model/BertMoCoForRelationExtraction.py`): encoder top, classifier head, online and slow branches.

    raw  = pool(upper(x))                                  (R = d for sentences, 2d for relations)
    feat = LayerNorm(GELU(Linear(Dropout_0.5(raw))))       classifier projection -> KMeans / NCM features
    logits = Linear_nobias(feat)                           over *all* labels, masked to seen labels at eval
    z    = online_projection(online_pooler(raw))           "current" representation (queue, memory bank)
    q    = online_prediction(z)                            the contrastive query
    k    = target_projection(target_pooler(target_upper(x)))   slow (EMA) key, no gradient

The official sentence-classification model wires its MoCo branch differently (the pooler reads the classifier
projection and the key comes from the online projection, so its slow encoder is never used); we use the relation
model's wiring, the method the paper describes, for both task types.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .encoder import UpperEncoder


class InfoCLNet(nn.Module):
    def __init__(self, upper: UpperEncoder, raw_dim: int, hidden: int, num_labels: int, dropout: float = 0.5,
                 proj_dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.upper = upper
        self.classifier_projection = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(raw_dim, hidden), nn.GELU(), nn.LayerNorm(hidden)
        )
        self.classifier = nn.Linear(hidden, num_labels, bias=False)
        self.online_pooler = nn.Linear(raw_dim, hidden)
        self.online_projection = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.Dropout(proj_dropout)
        )
        self.online_prediction = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.Dropout(proj_dropout),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
        )
        self.target: nn.ModuleDict | None = None  # the slow branch, made by init_target
        self.register_buffer("queue", torch.zeros(0, hidden))
        self.register_buffer("queue_labels", torch.zeros(0, dtype=torch.long))

    # --- forward pieces -------------------------------------------------------------------------------------------
    def raw(self, x: Tensor, mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        return self.upper(x, mask, pos)

    def features(self, raw: Tensor) -> Tensor:
        return self.classifier_projection(raw)

    def logits(self, raw: Tensor) -> Tensor:
        return self.classifier(self.features(raw))

    def online(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """(z = online projection, q = online prediction)."""
        z = self.online_projection(self.online_pooler(raw))
        return z, self.online_prediction(z)

    @torch.no_grad()
    def key(self, x: Tensor, mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        t = self.target
        assert t is not None, "init_target first"
        return t["projection"](t["pooler"](t["upper"](x, mask, pos)))

    # --- slow branch and queue ------------------------------------------------------------------------------------
    def init_target(self, bank: Tensor, bank_labels: Tensor) -> None:
        """InfoCL `init_target`: slow branch <- deep copy of the online one (frozen); queue <- normalised bank."""
        self.target = nn.ModuleDict(
            {
                "upper": copy.deepcopy(self.upper),
                "pooler": copy.deepcopy(self.online_pooler),
                "projection": copy.deepcopy(self.online_projection),
            }  # fmt: skip
        )
        self.target.requires_grad_(False)
        self.target.train(self.training)
        self.queue = nn.functional.normalize(bank.detach(), dim=1)
        self.queue_labels = bank_labels.detach().long()

    @torch.no_grad()
    def ema_update(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * online, over encoder top, pooler and projection."""
        assert self.target is not None
        pairs = [(self.upper, self.target["upper"]), (self.online_pooler, self.target["pooler"]),
                 (self.online_projection, self.target["projection"])]  # fmt: skip
        tps = [tp for online, target in pairs for tp in target.parameters()]
        ops = [op.detach() for online, target in pairs for op in online.parameters()]
        torch._foreach_mul_(tps, decay)  # the same two ops per tensor as mul_(decay).add_(op, alpha), batched
        torch._foreach_add_(tps, ops, alpha=1 - decay)

    @torch.no_grad()
    def push_queue(self, keys: Tensor, labels: Tensor, size: int) -> None:
        """FIFO: prepend the newest keys, keep `size`."""
        self.queue = torch.cat([keys.detach(), self.queue])[:size]
        self.queue_labels = torch.cat([labels.long(), self.queue_labels])[:size]

    def trainable_groups(self, encoder_lr: float, head_lr: float, weight_decay: float = 0.01) -> list[dict]:
        """InfoCL's four AdamW groups: encoder vs heads (lr 1e-5 vs 1e-3), no decay on biases and LayerNorms."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for mod_name, mod in self.named_modules():
            if mod_name.startswith("target"):
                continue
            for name, p in mod.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                no_decay = name == "bias" or isinstance(mod, nn.LayerNorm)
                groups.setdefault((mod_name.startswith("upper"), no_decay), []).append(p)
        return [
            {"params": ps, "lr": encoder_lr if enc else head_lr, "weight_decay": 0.0 if nd else weight_decay}
            for (enc, nd), ps in sorted(groups.items())
        ]
