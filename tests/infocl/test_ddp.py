"""The InfoCL loop under `accelerate launch --multi_gpu --num_processes 2` (accelerate's torchrun launcher; the worker
forces CPU with Accelerator(cpu=True), gloo) equals one process on the same global batches.

Tolerance: predictions and memory identical (random memory selection: KMeans near-ties may flip an exemplar); classifier weights within 1e-5 (the cross-rank gradient sum adds the
two halves of each batch in another order than one process does). Dropout is 0 here: its draws differ between
one and two processes, so with dropout the runs agree in distribution only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlab.infocl.methods import parse_method
from lmlab.infocl.train import Learner

sys.path.insert(0, str(Path(__file__).parent))
from infocl_ddp_worker import HYPER, METHOD  # noqa: E402

from .toy import TASKS, hyper, net, toy  # noqa: E402


@pytest.mark.slow  # two fresh processes importing torch + accelerate: ~20 s on an idle 2-core machine
def test_two_cpu_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).parent / "infocl_ddp_worker.py"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == 2 and r0["params"] == r1["params"]  # replicas stay identical
    feats, split = toy()
    learner = Learner(net(0.0, 0.0), feats, split, TASKS, parse_method(METHOD), hyper(**HYPER))
    state = learner.run()
    assert r0["preds"] == state.preds
    assert {int(k): v for k, v in r0["memory"].items()} == state.memory
    for k, v in learner.net.state_dict().items():
        if k.startswith("classifier"):
            assert torch.allclose(torch.tensor(r0["params"][k]), v.flatten(), atol=1e-5), k
    assert state.preds[-1] != state.preds[0]  # control: training moved the predictions
