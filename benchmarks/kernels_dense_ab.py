"""A/B of two builds of lmlab's kernels in one process: fp32 `packed_linear` at M rows, CPU time, 1 thread.

Both compiled modules are loaded side by side and alternated (best of 7), so load drift on a shared machine hits
both alike; every pair of outputs must be bit-identical. Build the old one from an older checkout first (its `.so`
lands in `~/.cache/lmlab/ext/decode_kernels-<hash>/`).
Run: OMP_NUM_THREADS=1 python benchmarks/kernels_dense_ab.py OLD.so NEW.so 1,2,4,8,16
"""

import argparse
import importlib.util
import time

import torch

SHAPES = {"w13": (3072, 576), "head": (49152, 576)}  # SmolLM2-135M's MLP up/gate (cache-resident), LM head (DRAM)


def load(path: str):
    name = path.rsplit("/", 1)[1].split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("rows", help="comma-separated row counts")
    a = ap.parse_args()
    torch.set_num_threads(1)
    old, new = load(a.old), load(a.new)
    torch.manual_seed(0)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k)
        for m in map(int, a.rows.split(",")):
            x = torch.randn(m, k)
            assert torch.equal(old.packed_linear(x, w, n, None, None), new.packed_linear(x, w, n, None, None))
            reps = 3 if name == "head" else 50
            times = {old: [], new: []}
            for _ in range(7):
                for mod in (old, new):
                    t = time.process_time()
                    for _ in range(reps):
                        mod.packed_linear(x, w, n, None, None)
                    times[mod].append((time.process_time() - t) / reps * 1e3)
            t_old, t_new = min(times[old]), min(times[new])
            print(f"{name} M={m}: old {t_old:.3f} ms, new {t_new:.3f} ms, new/old {t_new / t_old:.2f}")


if __name__ == "__main__":
    main()
