"""Why the quick AMR parser collapses to one graph at a higher learning rate (issue 16, RESULTS.md "amr").

A 2 x 2 design on the quick mode's NLR parser (seed 0, word vocabulary, d=128 2+2 layers, batch 16, graphs of
<= 48 target tokens): LR {1e-3, 2e-3} x steps {800, 1200} (warm-up 50). For each parser, on Little Prince DEV:

- greedy parses: distinct graphs of 145 and snowblink Smatch;
- teacher-forced cross-entropy (nats per target token, no label smoothing) with each sentence's own encoder input
  and with another sentence's (rotated by one): the gap is how much the decoder uses its input; ~0 means it has
  become an unconditional language model of graphs, whose greedy output is the same graph for every sentence;
- encoder states: mean pairwise cosine similarity of the mean-pooled encoder outputs of different sentences
  (1.0: every sentence encodes to the same vector);
- the training loss at the end (mean of the last 100 steps).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/amr_lr_collapse.py \
        benchmarks/results/amr_lr_collapse.json

Parsers are cached with the reproduction's keys (the LR 1e-3 / 800-step one is the quick mode's seed-0 NLR parser).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lmlab.amr.graphs import one_line, read_amr
from lmlab.amr.linearize import delinearize, linearize
from lmlab.amr.metrics import smatch_snowblink
from lmlab.amr.parser import _pad, _targets, settings_key, train_plain
from lmlab.amr.reproduce import _cached, make_tokenizer, quick_config
from lmlab.core.paths import atomic_write_text, shared_data


def probes(parser, dev) -> dict:
    tok, model = parser.tok, parser.model.eval()
    pad = tok.sid["<pad>"]
    src = [tok.text_input(g.sentence) for g in dev]
    tgt = [tok.target(linearize(g.tree)) for g in dev]
    out: dict = {}
    with torch.no_grad():
        for name, order in (("own", list(range(len(dev)))), ("other", [(i + 1) % len(dev) for i in range(len(dev))])):
            nll, n = 0.0, 0
            for b in range(0, len(dev), 32):
                idx = list(range(b, min(b + 32, len(dev))))
                ids, mask = _pad([src[order[i]] for i in idx], pad, 256)
                labels, dec = _targets(tok, [tgt[i] for i in idx], 512)
                logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
                nll += float(
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
                    )
                )
                n += int((labels != -100).sum())
            out[f"ce_{name}_input"] = nll / n
        out["ce_gap_other_minus_own"] = out["ce_other_input"] - out["ce_own_input"]
        ids, mask = _pad(src, pad, 256)
        h = model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
        sim = pooled @ pooled.T
        k = len(dev)
        out["encoder_mean_pairwise_cosine"] = float((sim.sum() - sim.diagonal().sum()) / (k * (k - 1)))
    toks = parser.parse_tokens([g.sentence for g in dev], beam=1)
    pred = [one_line(delinearize(t).tree) for t in toks]
    gold = [one_line(g) for g in dev]
    out["distinct_graphs"] = len(set(pred))
    out["dev_smatch_snowblink"] = 100 * smatch_snowblink(pred, gold)[0].f1
    out["most_common_graph"] = max(set(pred), key=pred.count)
    return out


def main(json_path: Path) -> None:
    cfg = quick_config()
    train = read_amr(shared_data("amr_little_prince", "lpp-v3.0-train.txt"))
    dev = read_amr(shared_data("amr_little_prince", "lpp-v3.0-dev.txt"))
    tok, tok_key = make_tokenizer(cfg, train)
    train = [g for g in train if len(tok.target(linearize(g.tree))) <= cfg.max_target_tokens]
    rows = []
    for lr, steps in ((1e-3, 800), (2e-3, 800), (2e-3, 1200), (1e-3, 1200)):
        st = replace(cfg.plain, seed=0, lr=lr, steps=steps, history=[])
        key = settings_key(st, f"{len(train)}-{tok_key}")
        t0, c0 = time.perf_counter(), time.process_time()
        parser = _cached(f"nlr-{key}", lambda st=st: train_plain(train, "nlr", st, tok=tok))
        row = {"lr": lr, "steps": steps, "train_cpu_s": time.process_time() - c0, "cached": not st.history}
        if st.history:
            losses = [h["loss"] for h in st.history]
            row["train_loss_last100"] = sum(losses[-100:]) / 100
            row["train_loss_by_100"] = [sum(losses[i : i + 100]) / 100 for i in range(0, len(losses), 100)]
        row.update(probes(parser, dev))
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        atomic_write_text(json_path, json.dumps({"what": __doc__.splitlines()[0], "rows": rows}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/amr_lr_collapse.json"))
