"""A tiny class-incremental problem on synthetic features (no encoder): 3 tasks x 2 classes, 16-d clusters;
classes 2k and 2k+1 of different tasks share a group ("analogous": nearby centres)."""

from __future__ import annotations

import torch

from lmlab.infocl.encoder import Features, UpperEncoder
from lmlab.infocl.methods import Hyper
from lmlab.infocl.model import InfoCLNet
from lmlab.infocl.train import Split

TASKS = [[0, 1], [2, 3], [4, 5]]
DIM = 16


def toy(n_train: int = 20, n_test: int = 8, seed: int = 0) -> tuple[Features, Split]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, DIM, generator=g) * 1.5
    centres[3] = centres[0] + 0.8 * torch.randn(DIM, generator=g)  # class 3 (task 2) is analogous to class 0
    xs, train, test, test_rows, test_labels = [], {}, {}, [], []
    n = 0
    for c in range(6):
        for part, k in ((train, n_train), (test, n_test)):
            xs.append(centres[c] + 0.7 * torch.randn(k, DIM, generator=g))
            part[c] = torch.arange(n, n + k)
            n += k
        test_rows += test[c].tolist()
        test_labels += [c] * n_test
    return Features(torch.cat(xs)), Split(train, test, torch.tensor(test_labels), torch.tensor(test_rows))


def net(dropout: float = 0.5, proj_dropout: float = 0.1) -> InfoCLNet:
    torch.manual_seed(0)
    return InfoCLNet(UpperEncoder(None, 0), DIM, DIM, 6, dropout, proj_dropout)


def hyper(**kw) -> Hyper:
    base = dict(batch=8, stage1_epochs=6, stage2_epochs=4, memory_size=4, queue_size=32, warmup_epochs=1, head_lr=1e-2)
    return Hyper(**{**base, **kw})
