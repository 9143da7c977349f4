"""The training loop under `accelerate launch` (DDP, 2 CPU processes on gloo; `--multi_gpu` is accelerate's torchrun launcher, the worker forces CPU) equals one process on the
concatenated batches (gradient averaging of equal-size per-rank means = the mean over the union)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.core.train import TrainConfig, train
from lmlab.moe.data import batches
from lmlab.moe.experiment import _loss_fn, build_model

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import SETUP, STEPS  # noqa: E402


def _joined():
    a = batches(torch.arange(4000, dtype=torch.int32) * 7 % 64, SETUP.batch, SETUP.seq_len, 100)
    b = batches(torch.arange(4000, dtype=torch.int32) * 7 % 64, SETUP.batch, SETUP.seq_len, 101)
    while True:
        yield torch.cat([next(a), next(b)])


@pytest.mark.slow  # two fresh processes importing torch + accelerate: ~20 s idle
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(Path(__file__).parent / "ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == 2
    assert r0["params"] == r1["params"] and r0["checksum"] == r1["checksum"]  # replicas stay identical
    torch.manual_seed(0)
    model = build_model(SETUP, "deepseekmoe")
    before = float(sum(p.detach().double().sum() for p in model.parameters()))
    train(model, _joined(), _loss_fn(model), TrainConfig(steps=STEPS, lr=1e-2, warmup=1, log_every=0))
    single = {
        k: v.flatten().tolist() for k, v in model.state_dict().items() if "router.weight" in k or k == "norm.weight"
    }
    assert abs(r0["checksum"] - before) > 1e-3  # training moved the weights
    for k, v in single.items():
        assert torch.allclose(torch.tensor(r0["params"][k]), torch.tensor(v), atol=2e-5), k
