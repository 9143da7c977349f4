"""The continual-learning loop of InfoCL (`train/DefaultHyperTrain.py`), resumable per task, data-parallel.

Per task t (current classes C_t, seen classes S_t):
  1. stage 1 on C_t's training data: CE (`default_train`), or CE + 0.05 SupInfoNCE against the slow branch and a
     512-key queue (`moco_train`, fast-slow contrastive); `joint` trains on S_t, DER++ adds its replay terms;
  2. memory: per new class, 10 exemplars (KMeans on classifier-projection features, nearest to each centroid;
     or random); their online projections become the "current" representations;
  3. stage 2 from task 2 on, on all memory: CE (`default_train`), or FreeLB CE + 0.05 SupInfoNCE(q, q, bank)
     against [past reps of the old memory; current reps] (`new_old_train`);
  4. evaluate: argmax of the logits masked to S_t (or nearest class mean); refresh the past reps; checkpoint.

Data parallelism (`accelerate launch`): every rank draws the same global batch (seeded permutations), computes
its contiguous share, normalises each loss by the *global* batch size, and gradients are summed across ranks
before clipping, so the step equals the one-process step on the whole batch. In-batch keys are all-gathered
(detached for the slow keys, differentiably for current-past queries); queue, EMA, memory selection and
evaluation are computed identically on every rank. Dropout draws differ between 1 and N processes, so exact
agreement holds with dropout 0 (the test); with dropout it is agreement in distribution.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.paths import atomic_dir
from .diagnostics import effective_rank
from .encoder import Features
from .losses import freelb_backward, sup_infonce
from .methods import Hyper, Method
from .model import InfoCLNet


class Dist:
    """Rank/world from an `accelerate.Accelerator` (or one process), and the three collectives the loop needs."""

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: Tensor) -> tuple[Tensor, list[int]]:
        parts = idx.tensor_split(self.world)
        return parts[self.rank], [len(p) for p in parts]

    def gather(self, t: Tensor, sizes: list[int], differentiable: bool = False) -> Tensor:
        """Concatenate every rank's rows (uneven shares padded for the collective, then trimmed)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        pad = max(sizes) - t.shape[0]
        tp = torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t
        if differentiable:
            from torch.distributed.nn.functional import all_gather

            parts = all_gather(tp)
        else:
            parts = [torch.empty_like(tp) for _ in range(self.world)]
            dist.all_gather(parts, tp.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


@dataclass
class Split:
    """Rows of the feature table belonging to each class (label id -> train / test row indices)."""

    train: dict[int, Tensor]
    test: dict[int, Tensor]
    test_labels: Tensor  # label of every test row, in `test_rows` order
    test_rows: Tensor


@dataclass
class OrderState:
    """Everything the loop carries from one task to the next (what a checkpoint holds)."""

    task: int = 0  # tasks finished
    memory: dict[int, list[int]] = field(default_factory=dict)  # label -> feature rows
    mem_logits: dict[int, Tensor] = field(default_factory=dict)  # DER++: label -> stored logits [m, num_labels]
    past_bank: Tensor | None = None
    past_labels: Tensor | None = None
    preds: list[list[int]] = field(default_factory=list)  # after each task: prediction for every test row
    erank_first: list[float] = field(default_factory=list)  # after each task: effective rank, task-1 test features
    seconds: float = 0.0


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` (total L2 norm over all gradients, scale by max_norm / (norm + 1e-6) when
    above), but without its unconditional multiply by clamp(coef, max=1) = 1.0 when below: the same gradients,
    one pass over them fewer (0.58 -> 0.31 ms per step here)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if float(norm) > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))


def _seed(*parts: object) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


class Learner:
    """One task order of one method: `run()` trains task after task, checkpointing after each."""

    def __init__(self, net: InfoCLNet, feats: Features, split: Split, tasks: list[list[int]], method: Method,
                 hyper: Hyper, ckpt_dir: Path | None = None, dist: Dist | None = None):  # fmt: skip
        self.net, self.feats, self.split, self.tasks = net, feats, split, tasks
        self.m, self.h = method, hyper
        self.ckpt_dir = ckpt_dir
        self.dist = dist or Dist()
        self.state = OrderState()

    # --- batches and steps ----------------------------------------------------------------------------------------
    def _batches(self, rows: Tensor, stage: str, epoch: int):
        g = torch.Generator().manual_seed(_seed(self.h.seed, self.state.task, stage, epoch))
        perm = rows[torch.randperm(len(rows), generator=g)]
        for s in range(0, len(perm), self.h.batch):
            yield perm[s : s + self.h.batch]

    def _labels(self, rows: Tensor) -> Tensor:
        return self.row_label[rows]

    def _optimizer(self, steps_per_epoch: int, warmup: bool):
        groups = self.net.trainable_groups(self.h.encoder_lr, self.h.head_lr, self.h.weight_decay)
        self._param_list = [p for g in groups for p in g["params"]]
        # fused AdamW: one pass over each tensor instead of ~12 foreach passes; the heads are small, so the step is
        # memory- and overhead-bound and this was 4.0 -> 1.1 ms CPU per step (InfoCL's heads, 1 thread, AVX2 EPYC)
        opt = torch.optim.AdamW(groups, fused=True)
        total = max(1, self.h.warmup_epochs * steps_per_epoch)
        # InfoCL: lambda step: step / (warmup_epochs * len) if step <= warmup_epochs * len else 1 (starts at 0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, (lambda s: s / total if s <= total else 1.0) if warmup else (lambda s: 1.0)
        )
        return opt, sched

    def _step(self, opt, sched) -> None:
        params = self._param_list  # the optimizer's parameters (walking the modules every step cost ~1.4 ms)
        self.dist.sum_grads(params)
        clip_grad_norm(params, self.h.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def _train(self, rows: Tensor, epochs: int, stage: str, step_fn: Callable, warmup: bool, before=None) -> None:
        n_batches = (len(rows) + self.h.batch - 1) // self.h.batch
        opt, sched = self._optimizer(n_batches, warmup)
        if before is not None:
            before()
        for epoch in range(epochs):
            self.net.train()
            for idx in self._batches(rows, stage, epoch):
                local, sizes = self.dist.shard(idx)
                if step_fn(idx, local, sizes) is not False:
                    self._step(opt, sched)
                else:
                    opt.zero_grad(set_to_none=True)

    def _ce(self, local: Tensor, n: int, x: Tensor | None = None) -> Tensor:
        """CE of the rows `local` (sum / global batch `n`); `x` replaces their cached input (FreeLB's x + delta)."""
        x0, mask, pos = self.feats.take(local)
        raw = self.net.raw(x0 if x is None else x, mask, pos)
        return F.cross_entropy(self.net.logits(raw), self._labels(local), reduction="sum") / n

    # --- stage 1 --------------------------------------------------------------------------------------------------
    def _default_step(self, idx, local, sizes) -> None:
        self._ce(local, len(idx)).backward()

    def _moco_init(self, rows: Tensor) -> None:
        """Queue <- online projections of the shuffled task data (eval mode), first 512; slow <- copy of online."""
        g = torch.Generator().manual_seed(_seed(self.h.seed, self.state.task, "queue"))
        perm = rows[torch.randperm(len(rows), generator=g)][: self.h.queue_size]
        z = self._online_repr(perm)
        self.net.init_target(z, self._labels(perm))

    def _moco_step(self, idx, local, sizes):
        labels = self._labels(idx)
        if not set(labels.tolist()) <= set(self.net.queue_labels.tolist()):
            return False  # InfoCL skips batches holding a label absent from the queue
        self.net.ema_update(self.h.ema_decay)
        x, mask, pos = self.feats.take(local)
        raw = self.net.raw(x, mask, pos)
        n = len(idx)
        ce = F.cross_entropy(self.net.logits(raw), self._labels(local), reduction="sum") / n
        _, q = self.net.online(raw)
        keys = self.dist.gather(self.net.key(x, mask, pos), sizes)
        offset = sum(sizes[: self.dist.rank])
        con = sup_infonce(q, keys, self.net.queue, self._labels(local), self.net.queue_labels, self.h.tau,
                          key_labels=labels, self_index=torch.arange(len(local)) + offset, reduction="sum") / n  # fmt: skip
        (ce + self.h.moco_lambda * con).backward()
        self.net.push_queue(keys, labels, self.h.queue_size)

    def _derpp_step(self, idx, local, sizes) -> None:
        self._ce(local, len(idx)).backward()
        mem = self._memory_rows()
        if not len(mem):
            return
        g = torch.Generator().manual_seed(_seed(self.h.seed, self.state.task, "derpp", idx.tolist()))
        midx = mem[torch.randint(len(mem), (len(idx),), generator=g)]
        mlocal, _ = self.dist.shard(midx)
        x, mask, pos = self.feats.take(mlocal)
        logits = self.net.logits(self.net.raw(x, mask, pos))
        stored = torch.stack([self.row_logit[int(r)] for r in mlocal])
        n = len(midx)
        mse = ((logits - stored) ** 2).mean(1).sum() / n
        ce = F.cross_entropy(logits, self._labels(mlocal), reduction="sum") / n
        (self.h.derpp_alpha * mse + self.h.derpp_beta * ce).backward()

    # --- stage 2 --------------------------------------------------------------------------------------------------
    def _new_old_step(self, idx, local, sizes) -> None:
        n = len(idx)
        x, mask, pos = self.feats.take(local)
        if self.m.cpcl:
            _, q = self.net.online(self.net.raw(x, mask, pos))
            keys = self.dist.gather(q, sizes, differentiable=True)
            offset = sum(sizes[: self.dist.rank])
            con = sup_infonce(q, keys, self.net.queue, self._labels(local), self.net.queue_labels, self.h.tau,
                              key_labels=self._labels(idx), self_index=torch.arange(len(local)) + offset,
                              reduction="sum") / n  # fmt: skip
            (self.h.cp_lambda * con).backward()
        k = self.h.adv_k if self.m.adv else 1  # K = 1 is the clean CE
        # freelb_backward calls loss_fn(x + delta): the perturbed input itself, not a delta to add again
        freelb_backward(lambda xd: self._ce(local, n, xd), x, k, self.h.adv_lr, self.h.adv_max_norm)

    # --- representations, memory, evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def _apply(self, rows: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        was = self.net.training
        self.net.eval()
        out = []
        for s in range(0, len(rows), self.h.eval_batch):
            x, mask, pos = self.feats.take(rows[s : s + self.h.eval_batch])
            out.append(fn(self.net.raw(x, mask, pos)))
        self.net.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def _online_repr(self, rows: Tensor) -> Tensor:
        return self._apply(rows, lambda r: self.net.online(r)[0])

    def _select(self, label: int) -> list[int]:
        rows = self.split.train[label]
        m = min(self.h.memory_size, len(rows))
        if self.m.kmeans:
            from sklearn.cluster import KMeans

            feats = self._apply(rows, self.net.features).numpy()
            dist = KMeans(n_clusters=m, n_init=m, random_state=0).fit_transform(feats)
            return [int(rows[int(np.argmin(dist[:, j]))]) for j in range(m)]  # duplicates allowed, as InfoCL
        g = torch.Generator().manual_seed(_seed(self.h.seed, "memory", label))
        return [int(r) for r in rows[torch.randperm(len(rows), generator=g)[:m]]]

    def _erank(self, classes: list[int]) -> float:
        """IB diagnostic: effective rank of the classifier-projection features of these classes' test rows (eval
        mode: no dropout draw, so training is unchanged)."""
        rows = torch.cat([self.split.test[c] for c in classes])
        return effective_rank(self._apply(rows, self.net.features))

    def _memory_rows(self) -> Tensor:
        return torch.tensor([r for lab in sorted(self.state.memory) for r in self.state.memory[lab]], dtype=torch.long)

    @torch.no_grad()
    def _predict(self, seen: list[int], cur: list[int]) -> list[int]:
        rows = self.split.test_rows
        if self.m.ncm:  # InfoCL NCMEvaluate: cosine to class means of classifier features
            protos = []
            for lab in seen:
                src = self.split.train[lab] if lab in cur else torch.tensor(self.state.memory[lab])
                protos.append(self._apply(src, self.net.features).mean(0))
            p = torch.stack(protos)
            sims = self._apply(rows, lambda r: F.cosine_similarity(self.net.features(r)[:, None], p[None], dim=-1))
            return torch.tensor(seen)[sims.argmax(1)].tolist()
        mask = torch.full((self.net.classifier.out_features,), float("-inf"))
        mask[seen] = 0
        return self._apply(rows, lambda r: (self.net.logits(r) + mask).argmax(1)).tolist()

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self, on_task: Callable[[int, OrderState], None] | None = None) -> OrderState:
        n_rows = len(self.feats)
        self.row_label = torch.full((n_rows,), -1, dtype=torch.long)
        for lab, rows in {**self.split.train, **{}}.items():
            self.row_label[rows] = lab
        for lab, rows in self.split.test.items():
            self.row_label[rows] = lab
        self.row_logit: dict[int, Tensor] = {}
        self._resume()
        for t in range(self.state.task, len(self.tasks)):
            t0 = time.time()
            torch.manual_seed(_seed(self.h.seed, "dropout", t, self.dist.rank if self.dist.world > 1 else 0))
            cur = self.tasks[t]
            seen = [c for task in self.tasks[: t + 1] for c in task]
            pool = seen if self.m.joint else cur
            rows = torch.cat([self.split.train[c] for c in pool])
            if self.m.fscl:
                self._train(
                    rows, self.h.stage1_epochs, "stage1", self._moco_step, True, lambda rows=rows: self._moco_init(rows)
                )
            elif self.m.derpp:
                self._train(rows, self.h.stage1_epochs, "stage1", self._derpp_step, False)
            else:
                self._train(rows, self.h.stage1_epochs, "stage1", self._default_step, False)
            cur_bank, cur_labels = [], []
            if self.m.memory:
                for c in cur:
                    self.state.memory[c] = self._select(c)
                    mem = torch.tensor(self.state.memory[c])
                    if self.m.cpcl:
                        cur_bank.append(self._online_repr(mem))
                        cur_labels.append(self._labels(mem))
                    if self.m.derpp:
                        self.state.mem_logits[c] = self._apply(mem, self.net.logits)
                        for r, lg in zip(mem.tolist(), self.state.mem_logits[c]):
                            self.row_logit[r] = lg
            if t > 0 and self.m.stage2 and self.m.memory:
                mem_rows = self._memory_rows()
                if self.m.cpcl or self.m.adv:
                    if self.m.cpcl:
                        bank = torch.cat(
                            ([self.state.past_bank] if self.state.past_bank is not None else []) + cur_bank
                        )
                        bank_labels = torch.cat(
                            ([self.state.past_labels] if self.state.past_labels is not None else []) + cur_labels
                        )
                        self.net.init_target(bank, bank_labels)
                    self._train(mem_rows, self.h.stage2_epochs, "stage2", self._new_old_step, True)
                else:
                    self._train(mem_rows, self.h.stage2_epochs, "stage2", self._default_step, False)
            self.state.preds.append(self._predict(seen, cur))
            self.state.erank_first.append(self._erank(self.tasks[0]))
            if self.m.cpcl:
                mem_rows = self._memory_rows()
                self.state.past_bank = self._online_repr(mem_rows)
                self.state.past_labels = self._labels(mem_rows)
            self.state.task = t + 1
            self.state.seconds += time.time() - t0
            self._checkpoint()
            if on_task is not None:
                on_task(t, self.state)
        return self.state

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        if self.ckpt_dir is None:
            return
        if self.dist.main:
            with atomic_dir(self.ckpt_dir) as tmp:
                net = {k: v for k, v in self.net.state_dict().items() if not k.startswith("target.")}
                torch.save(
                    {
                        "net": net,
                        "target": None if self.net.target is None else self.net.target.state_dict(),
                        "queue": self.net.queue,
                        "queue_labels": self.net.queue_labels,
                        # predictions and memory as tensors: torch.save pickles a list element by element
                        # (a persistent_id call per int; 77 ms per checkpoint of CLINC150's 4,500 test rows)
                        "state": {
                            **self.state.__dict__,
                            "preds": torch.tensor(self.state.preds, dtype=torch.int32),
                            "memory": {c: torch.tensor(r, dtype=torch.long) for c, r in self.state.memory.items()},
                        },
                    },
                    tmp / "state.pt",
                )
        self.dist.barrier()

    def _resume(self) -> None:
        path = None if self.ckpt_dir is None else self.ckpt_dir / "state.pt"
        if path is None or not path.exists():
            return
        d = torch.load(path, weights_only=False)
        self.net.queue, self.net.queue_labels = d["queue"], d["queue_labels"]
        if d["target"] is not None:
            self.net.init_target(self.net.queue, self.net.queue_labels)
            self.net.target.load_state_dict(d["target"])
        self.net.load_state_dict({**d["net"], "queue": d["queue"], "queue_labels": d["queue_labels"]}, strict=False)
        self.net.queue, self.net.queue_labels = d["queue"], d["queue_labels"]
        st = d["state"]
        preds, memory = st["preds"], st["memory"]
        st["preds"] = preds.tolist() if isinstance(preds, Tensor) else preds
        st["memory"] = {c: (r.tolist() if isinstance(r, Tensor) else r) for c, r in memory.items()}
        self.state = OrderState(**st)
        for lab, lg in self.state.mem_logits.items():
            for r, row in zip(self.state.memory[lab], lg):
                self.row_logit[r] = row
