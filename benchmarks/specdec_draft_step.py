"""One decoding step of the selfq4 draft (8-bit and fp32 activations for its 4-bit layers) and of its fp32 target,
at context 100, SmolLM2-135M, best quartile of 30 steps; also each model's LM head alone.
Run: HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/specdec_draft_step.py
"""

import time

import torch

from lmlab.core.loader import load_model
from lmlab.specdec.drafters import quantized_self_draft


def quartile_ms(f, n: int = 30) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 4] * 1e3


def main():
    target = load_model("smollm2-135m-instruct", dtype=torch.float32).model
    draft = quantized_self_draft(target)
    ids, tok, x = torch.randint(0, 1000, (1, 100)), torch.tensor([[5]]), torch.randn(1, 1, target.cfg.hidden_size)
    with torch.inference_mode():
        for name, m, act8 in (("target fp32", target, None), ("draft", draft, True), ("draft", draft, False)):
            if act8 is not None:
                for mod in m.layers.modules():
                    if hasattr(mod, "act8"):
                        mod.act8 = act8
                m.block_act8 = act8
            cache = m.new_cache(1, 256)
            m(ids, cache)

            def step(m=m, cache=cache):
                m(tok, cache)
                cache.rollback([100])

            label = name if act8 is None else f"{name}, {'8-bit' if act8 else 'fp32'} activations"
            print(f"{label}: step {quartile_ms(step):.2f} ms, LM head {quartile_ms(lambda: m.lm_head(x)):.2f} ms")


if __name__ == "__main__":
    main()
