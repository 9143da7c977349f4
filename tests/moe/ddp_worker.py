"""Run by test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` with Accelerator(cpu=True): a few DDP steps of the MoE LM."""

import json
import sys

import torch
from accelerate import Accelerator

from lmlab.core.train import TrainConfig, train
from lmlab.moe.data import batches
from lmlab.moe.experiment import Setup, _loss_fn, build_model

SETUP = Setup(vocab=64, hidden=32, layers=2, heads=2, width=32, seq_len=16, batch=4, alpha1=0.0)
STEPS = 3


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = build_model(SETUP, "deepseekmoe")
    ids = torch.arange(4000, dtype=torch.int32) * 7 % 64
    hist = train(
        model,
        batches(ids, SETUP.batch, SETUP.seq_len, 100 + acc.process_index),
        _loss_fn(model),
        TrainConfig(steps=STEPS, lr=1e-2, warmup=1, log_every=0),
        accelerator=acc,
    )
    raw = acc.unwrap_model(model)
    with open(f"{out}/rank{acc.process_index}.json", "w") as f:
        json.dump(
            {
                "world": acc.num_processes,
                "loss": [h["loss"] for h in hist],
                "params": {
                    k: v.flatten().tolist()
                    for k, v in raw.state_dict().items()
                    if "router.weight" in k or k == "norm.weight"
                },
                "checksum": float(sum(p.double().sum() for p in raw.parameters())),
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1])
