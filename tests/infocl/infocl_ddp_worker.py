"""Run by test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): the InfoCL loop, data-parallel."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from accelerate import Accelerator  # noqa: E402
from toy import TASKS, hyper, net, toy  # noqa: E402

from lmlab.infocl.methods import parse_method  # noqa: E402
from lmlab.infocl.train import Dist, Learner  # noqa: E402

# every gathered path: slow keys, current-past queries (differentiable), FreeLB; random memory (KMeans near-ties
# can flip one exemplar under a 1e-7 weight difference, so it is left out of the exactness check)
METHOD = "er+fscl+cpcl+adv+ncm"
HYPER = dict(batch=7)  # 20 rows per class, 40 per task: uneven last batches and shards


def main(out: str) -> None:
    acc = Accelerator(cpu=True)
    feats, split = toy()
    learner = Learner(net(0.0, 0.0), feats, split, TASKS, parse_method(METHOD), hyper(**HYPER), dist=Dist(acc))
    state = learner.run()
    params = {k: v.flatten().tolist() for k, v in learner.net.state_dict().items() if k.startswith("classifier")}
    Path(out, f"rank{acc.process_index}.json").write_text(
        json.dumps({"world": acc.num_processes, "preds": state.preds, "params": params, "memory": state.memory})
    )


if __name__ == "__main__":
    main(sys.argv[1])
