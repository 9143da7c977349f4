"""One call from a benchmark spec, a method and an encoder to per-order results (resumable, JSON per order).

`run(spec, method, ...)` builds each task order's splits, the frozen encoder's features (computed once per data set
and cached), a fresh network per order (seeded: every method starts from the same weights for a given order), and
runs the `Learner`. `out_dir/<method>/order<r>/` holds the per-task checkpoint and, once finished, result.json;
a finished order is read back, an unfinished one continues from its last finished task.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..core.errors import LmlabError
from ..core.paths import atomic_write_text
from .data import Benchmark, BenchmarkSpec, build
from .encoder import DEFAULT_ENCODER, Features, UpperEncoder, cached_features
from .methods import Hyper, Method, parse_method
from .metrics import compute
from .model import InfoCLNet
from .train import Dist, Learner, Split


@dataclass(frozen=True)
class Setup:
    encoder: str = DEFAULT_ENCODER
    train_layers: int = 0  # 0: heads on frozen pooled features; k: also the top k transformer layers
    max_len: int = 64


def spec_hyper(spec: BenchmarkSpec, **overrides) -> Hyper:
    """InfoCL's batch size: 16 for HWU64 (configs/task_args/HWU64.yaml), 32 otherwise."""
    return replace(Hyper(batch=16 if spec.source == "hwu64" else 32), **overrides)


def order_views(bench: Benchmark, table_rows: dict[str, int]) -> tuple[Split, Tensor, list[int]]:
    """Examples of one order as rows 0..n-1 (train of every class, then test), mapped onto the shared table."""
    index, train, test, test_labels, test_rows = [], {}, {}, [], []
    for c in range(len(bench.labels)):
        for part, dst in ((bench.train[c], train), (bench.test[c], test)):
            start = len(index)
            index += [table_rows[e.text] for e in part]
            dst[c] = torch.arange(start, len(index))
        test_rows += test[c].tolist()
        test_labels += [c] * len(test[c])
    split = Split(train, test, torch.tensor(test_labels), torch.tensor(test_rows))
    return split, torch.tensor(index), test_labels


def prepare(spec: BenchmarkSpec, orders: list[int], setup: Setup) -> tuple[list[Benchmark], Features, object]:
    benches = [build(spec, r) for r in orders]
    texts = sorted({e.text for b in benches for part in (b.train, b.test) for rows in part.values() for e in rows})
    feats, model = cached_features(setup.encoder, texts, setup.train_layers, spec.task_type, setup.max_len)
    return benches, feats, model


def make_net(model, setup: Setup, task_type: str, num_labels: int, hyper: Hyper, seed: int) -> InfoCLNet:
    torch.manual_seed(seed)
    hidden = model.config.hidden_size
    raw_dim = hidden * (2 if task_type == "relation" else 1)
    return InfoCLNet(
        UpperEncoder(model, setup.train_layers), raw_dim, hidden, num_labels, hyper.dropout, hyper.proj_dropout
    )


def run(
    spec: BenchmarkSpec,
    method: str | Method,
    orders: list[int],
    out_dir: Path | None,
    setup: Setup = Setup(),
    hyper: Hyper | None = None,
    dist: Dist | None = None,
    prepared: tuple[list[Benchmark], Features, object] | None = None,
    log=None,
    only: list[int] | None = None,
) -> list[dict]:
    """Results of `orders` (finished ones read back). `only`: train just these orders and skip unfinished others
    (a worker's share of a parallel reproduction; the text table still spans all `orders`)."""
    m = parse_method(method) if isinstance(method, str) else method
    hyper = hyper or spec_hyper(spec)
    benches, table, model = prepared or prepare(spec, orders, setup)
    if len(benches) != len(orders):
        raise LmlabError("prepared benchmarks do not match the orders", hint="pass prepare(spec, orders, setup)")
    texts = sorted({e.text for b in benches for part in (b.train, b.test) for rows in part.values() for e in rows})
    table_rows = {t: i for i, t in enumerate(texts)}
    results = []
    for r, bench in zip(orders, benches):
        odir = None if out_dir is None else Path(out_dir) / m.name / f"order{r}"
        done = None if odir is None else odir / "result.json"
        if done is not None and done.exists():
            results.append(json.loads(done.read_text()))
            continue
        if only is not None and r not in only:
            continue
        split, index, test_labels = order_views(bench, table_rows)
        net = make_net(model, setup, spec.task_type, len(bench.labels), hyper, hyper.seed + bench.seed)
        h = replace(hyper, seed=hyper.seed + bench.seed)
        learner = Learner(
            net, table.view(index), split, bench.tasks, m, h, None if odir is None else odir / "ckpt", dist
        )
        state = learner.run(
            None if log is None else lambda t, s, _r=r: log(f"{spec.name} {m.name} order {_r}: task {t + 1} done")
        )
        res = {
            "benchmark": spec.name,
            "method": m.name,
            "order": r,
            "order_seed": bench.seed,
            "seed": h.seed,
            "tasks": bench.tasks,
            "labels": bench.labels,
            "seconds": state.seconds,
            "setup": asdict(setup),
            "hyper": asdict(hyper),
            **compute(bench.tasks, test_labels, state.preds, bench.groups),
            # IB diagnostic (diagnostics.py): effective rank of task-1 classes' features after each task, and the
            # share of it left after the last task (100 = no compression of the first task's representation)
            "erank_first": state.erank_first,
            "erank_first_kept": 100 * state.erank_first[-1] / state.erank_first[0]
            if len(state.erank_first) == len(bench.tasks) and state.erank_first[0] > 0
            else None,
        }
        if done is not None and (dist is None or dist.main):
            atomic_write_text(done, json.dumps(res))
        results.append(res)
    return results
