"""EAGLE-style feature-level draft head (Li et al. 2024) with EAGLE-2 dynamic draft trees.

The head reads the target's final hidden state f_t and the embedding of the next token x_{t+1}
(`fc([f_t; E(x_{t+1})])`), runs one decoder layer with its own KV cache, and predicts f_{t+1}; the
target's frozen LM head turns that into a distribution over x_{t+2}. Drafting feeds the head its own
predicted features. On a CPU the LM head (49k x 576) would dominate the drafting cost, so the head scores
only a frequency-ranked token subset (FR-Spec, Zhao et al. 2025); verification still uses the full
vocabulary, so the output is unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.engine import SamplingParams, probs_from_logits
from ..core.errors import LmlabError
from ..core.model import Linear, Transformer, set_weight_dtype
from .cost import best_size, pass_cost
from .verify import Draft


class EagleHead(nn.Module):
    """fc([feature; token embedding]) -> Llama decoder layer(s) (EAGLE: one) -> RMSNorm -> predicted feature.

    `feature_layers` (EAGLE-3, Li et al. 2025): instead of the target's final hidden state alone, read several
    of its hidden states (indexes in the HF convention: 0 = embeddings, i = output of layer i, the last one
    normed), fused by one linear map into the feature space. Only the first draft level sees target features;
    deeper levels read the head's own outputs, which training feeds it too (`train.unrolled_head_loss`).
    """

    def __init__(self, target_cfg, vocab: Tensor, layers: int = 1, feature_layers: tuple[int, ...] = ()):
        super().__init__()
        H = target_cfg.hidden_size
        self.fc = Linear(2 * H, H, bias=True)
        self.fuse = Linear(len(feature_layers) * H, H, bias=False) if feature_layers else None
        # a small Transformer gives the decoder layer(s), KV cache, RoPE and tree masks; its own embedding and
        # LM head are unused (vocab_size=1): the target's frozen ones are passed in at call time
        self.body = Transformer(replace(target_cfg, num_layers=layers, vocab_size=1, tie_word_embeddings=True))
        self.register_buffer("vocab", vocab.long().clone())
        self.register_buffer("feature_layers", torch.tensor(feature_layers, dtype=torch.long))

    def fuse_in(self, feats: Tensor) -> Tensor:
        """Target features -> the head's feature space (identity for EAGLE's single final feature)."""
        return feats if self.fuse is None else self.fuse(feats.to(self.fuse.weight.dtype))

    def forward(self, feats: Tensor, tokens: Tensor, embed: nn.Embedding, cache, **kw) -> Tensor:
        """feats [B, T, H] (head feature space), tokens [B, T] -> predicted next features [B, T, H] (normed)."""
        x = self.fc(torch.cat([feats.to(self.fc.weight.dtype), embed(tokens).to(self.fc.weight.dtype)], -1))
        return self.body(tokens, cache, inputs_embeds=x, logits="none", **kw).last_hidden


def target_features(out, layers: tuple[int, ...]) -> Tensor:
    """What a feature-level draft reads from a target forward (`ForwardOut`): the final normed hidden state,
    or the hidden states `layers` concatenated (the forward must then have run with output_hidden_states)."""
    if not layers:
        return out.last_hidden
    return torch.cat([out.hidden_states[i] for i in layers], -1)


def subset_head(lm_head: nn.Linear, vocab: Tensor) -> Linear:
    """A Linear over the LM-head rows of the token subset `vocab`, copied once: gathering them on every draft
    step would move 8k x H weights per call, more than the draft layer itself costs."""
    rows = lm_head.weight.detach()[vocab].contiguous()
    head = Linear(rows.shape[1], rows.shape[0], bias=False, device=rows.device, dtype=rows.dtype)
    head.weight = nn.Parameter(rows, requires_grad=False)
    head.pack_dtype = getattr(lm_head, "pack_dtype", torch.float32)
    return head


def subset_logits(h: Tensor, rows: Linear) -> Tensor:
    """Logits over a token subset only ([..., len(subset)]), from that subset's LM-head `rows`."""
    return rows(h.to(rows.weight.dtype))


def save_head(head: EagleHead, folder: Path, meta: dict) -> Path:
    """Write the head's own tensors (the target's embedding and LM head are not copied), atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in head.state_dict().items() if not k.startswith(("body.embed", "body.lm_head"))}
    save_file(sd, str(tmp / "eagle_head.safetensors"))
    (tmp / "eagle_config.json").write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_head(folder: Path, target: Transformer) -> EagleHead:
    from safetensors.torch import load_file

    folder = Path(folder)
    f = folder / "eagle_head.safetensors"
    if not f.exists():
        raise LmlabError(f"{folder}: no eagle_head.safetensors", hint="train one with `lmlab specdec train-head`")
    sd = load_file(str(f))
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("body.layers."))
    fl = tuple(sd["feature_layers"].tolist()) if "feature_layers" in sd else ()  # heads saved before EAGLE-3 features
    if any(not 0 <= i <= target.cfg.num_layers for i in fl):
        raise LmlabError(
            f"{folder}: head reads hidden states {list(fl)}, target has {target.cfg.num_layers} layers",
            hint="train a head for this target with `lmlab specdec train-head --target ...`",
        )
    head = EagleHead(target.cfg, sd["vocab"], layers, fl)
    if sd["fc.weight"].shape[1] != 2 * target.cfg.hidden_size:
        raise LmlabError(
            f"{folder}: head was trained for hidden size {sd['fc.weight'].shape[1] // 2}, target has {target.cfg.hidden_size}",
            hint="train a head for this target with `lmlab specdec train-head --target ...`",
        )
    missing, unexpected = head.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.startswith(("body.embed", "body.lm_head")) and m != "feature_layers"]
    if missing or unexpected:
        raise LmlabError(
            f"{f}: tensors do not match an EAGLE head (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return head.to(device=target.device, dtype=target.dtype).eval()


class EagleDrafter:
    """Draft with the head: a dynamic tree (EAGLE-2) under greedy decoding, a sampled chain otherwise.

    Tree: the `topk` best tokens at the root; then `depth - 1` times, expand the `topk` frontier nodes with
    the highest cumulative draft log-probability into `topk` children each. Each expansion re-runs the head over
    all expanded nodes of this round with an ancestor mask (one layer, a few dozen tokens), so the cache only
    ever holds committed context. Which candidates reach the target: the `total` best nodes (EAGLE-2), or with
    total=None as many as pay for themselves on this machine (`_auto`: calibrated draft confidence against the
    target's measured pass cost, `cost.PassCost`). The CPU default is small (2/3/3): on the 2-core reference
    machine a pass over n tokens costs 1.01 steps at n = 4 and 1.14 at n = 8, each head level ~0.05 steps, and
    the head's extra nodes are rarely accepted, so cost-aware sizing measured the same speed as 2/3/3 (1.05x
    on 13 dev prompts) while deeper trees lost (0.93-1.00x); on a GPU, where the pass cost stays near 1 up to
    dozens of tokens, EAGLE-2's own 10/6/60 or total=None is the better setting.
    """

    name = "eagle"

    def __init__(
        self,
        head: EagleHead,
        target: Transformer,
        topk: int = 2,
        depth: int = 3,
        total: int | None = 3,
        chain: int = 4,
        stream_bf16: bool = True,
        lookup: bool = False,
        max_total: int = 24,
    ):
        from .drafters import PromptLookup  # (drafters imports this module)

        self.head, self.target = head, target
        self.topk, self.depth, self.total, self.chain = topk, depth, total, chain
        # lookup: where the context's last n-gram recurs, propose what followed it (prompt lookup) instead of the
        # head's tree; copying beats a weak head on extraction-like text, and skipping the head saves its cost
        # cost-aware trees read this machine's pass-cost curve for the target (measured once per model, ~1-2 s)
        self.cost = pass_cost(target) if total is None else None
        self.lookup = PromptLookup() if lookup else None
        self.max_total = min(max_total, topk + (depth - 1) * topk * topk)  # at most the whole candidate pool
        look = self.lookup.max_nodes if self.lookup else 0
        self.max_nodes = max(
            (self.max_total if total is None else total) + depth, chain, look
        )  # (+ ancestors tied on score)
        self.kappa = [1.0, 1.0]  # EMAs of (accepted, predicted) draft tokens per row: calibrates draft confidence
        self.feature_layers = tuple(head.feature_layers.tolist())  # what spec_stream passes as `hidden`
        self.vocab = head.vocab.to(target.device)
        self.rows = subset_head(target.lm_head, self.vocab)
        if stream_bf16:  # draft numbers only steer acceptance: stream the head's weights as bf16 (half the bytes)
            set_weight_dtype(head, torch.bfloat16, exact=False)
            self.rows.pack_dtype = torch.bfloat16

    # -- state: head cache over committed pairs (f_t, x_{t+1}); features not yet fed to the head
    def begin(self, prompts: list[list[int]], hidden: Tensor, capacity: int) -> None:
        extra = self.topk * self.depth + self.chain + 2
        self.cache = self.head.body.new_cache(len(prompts), capacity + extra)
        self.feats = [hidden[b, : len(p)] for b, p in enumerate(prompts)]  # features of ctx[fed : len-1]

    def update(self, ctx: list[list[int]], drafts: list[Draft], paths: list[list[int]], hidden: Tensor) -> None:
        if self.lookup is not None:
            rows = [b for b, f in enumerate(self._looked) if f]
            self.lookup.update([ctx[b] for b in rows], [drafts[b] for b in rows], [paths[b] for b in rows], hidden)
        if self._pred is not None:
            e = 0.9
            self.kappa = [
                e * self.kappa[0] + (1 - e) * sum(map(len, paths)) / len(paths),
                e * self.kappa[1] + (1 - e) * sum(self._pred) / len(paths),
            ]
        if self._fed:
            self.cache.rollback(self.base)  # drop this round's draft slots
        for b, path in enumerate(paths):  # real features of the root and the accepted nodes, after any not yet fed
            new = hidden[b, [0] + path]
            self.feats[b] = new if self._fed else torch.cat([self.feats[b], new])

    def keep(self, index: Tensor) -> None:
        self.cache.reorder(index)
        self.feats = [self.feats[i] for i in index.tolist()]

    def _commit(self, ctx: list[list[int]]) -> Tensor:
        """Feed pairs (f_t, x_{t+1}) for the newly committed positions; returns the last output per row."""
        dev = self.target.device
        n = [f.shape[0] for f in self.feats]
        T = max(n)
        F_ = self.feats[0].shape[-1]
        feats = torch.zeros(len(ctx), T, F_, dtype=self.target.dtype, device=dev)
        toks = torch.zeros(len(ctx), T, dtype=torch.long, device=dev)
        for b, c in enumerate(ctx):
            feats[b, : n[b]] = self.feats[b]
            toks[b, : n[b]] = torch.tensor(c[len(c) - n[b] :], device=dev)
        h = self.head(
            self.head.fuse_in(feats), toks, self.target.embed, self.cache, num_tokens=n if min(n) != T else None
        )
        self.base = list(self.cache.lengths)
        return h[torch.arange(len(ctx), device=dev), torch.tensor(n, device=dev) - 1]

    def propose(self, ctx: list[list[int]], params: SamplingParams, gen: torch.Generator | None) -> list[Draft]:
        t0 = time.perf_counter()
        self._looked, self._pred, self._fed = [False] * len(ctx), None, False
        found = self.lookup.propose(ctx, params, gen) if self.lookup is not None and params.temperature <= 0 else None
        if found is not None:
            self._looked = [len(d) > 0 for d in found]
            if all(self._looked):  # every row copies: the head need not run this round (it catches up next time)
                return found
        h = self._commit(ctx)
        self._fed = True
        if params.temperature > 0:
            return self._chain(h, params, gen)
        tree = self._tree(h) if self.total is not None else self._auto(ctx, h, t0)
        return tree if found is None else [f if ok else t for f, t, ok in zip(found, tree, self._looked)]

    def _auto(self, ctx: list[list[int]], h: Tensor, t0: float) -> list[Draft]:
        """Cost-aware tree: the EAGLE-2 candidate pool ranked by cumulative draft confidence; keep the N best nodes,
        with N (shared by the batch, since the pass is padded to the widest row) maximising expected emitted tokens
        per unit of time, sum_b (1 + kappa * sum_{i <= N} exp(score_b,i)) / (cost(B (N + 1), L) + draft), where
        cost is this machine's measured pass cost (`cost.PassCost`), draft this round's drafting time in steps and
        kappa the running ratio of accepted to predicted tokens (the head's confidence calibration)."""
        pools = self._tree(h, pools=True)
        order = [sorted(range(len(p[0])), key=lambda i, p=p: -p[2][i]) for p in pools]
        kappa = self.kappa[0] / max(self.kappa[1], 1e-6)
        gain = [[0.0] for _ in pools]  # gain[b][n]: expected accepted draft tokens with the n best nodes
        for b, p in enumerate(pools):
            for i in order[b][: self.max_total]:
                gain[b].append(gain[b][-1] + kappa * math.exp(p[2][i]))
        L = sum(map(len, ctx)) // len(ctx)
        best = best_size(gain, self.cost, L, (time.perf_counter() - t0) / self.cost.step_seconds(L))
        self._pred = [g[best] / kappa for g in gain]
        return [_draft(p[0], p[1], p[3], set(o[:best])) for p, o in zip(pools, order)]

    def _logits(self, h: Tensor) -> Tensor:
        return subset_logits(h, self.rows).float()

    def _chain(self, h: Tensor, params: SamplingParams, gen: torch.Generator | None) -> list[Draft]:
        """Sampled chain: every token is a draw from the head's (filtered) distribution over the subset."""
        B, V, dev = h.shape[0], self.target.cfg.vocab_size, h.device
        toks, qs = [], []
        base = torch.tensor(self.base, device=dev)
        for j in range(self.chain):
            sub = torch.full((B, V), float("-inf"), device=dev)
            sub[:, self.vocab] = self._logits(h)
            q = probs_from_logits(sub, params)
            t = torch.multinomial(q, 1, generator=gen).squeeze(-1)
            toks.append(t)
            qs.append(q)
            if j < self.chain - 1:
                h = self.head(h[:, None], t[:, None], self.target.embed, self.cache, positions=(base + j)[:, None])[
                    :, 0
                ]
        tok, q = torch.stack(toks, 1).tolist(), torch.stack(qs, 1)
        return [Draft.chain(tok[b], q[b]) for b in range(B)]

    def _tree(self, h: Tensor, pools: bool = False):
        """EAGLE-2's expansion; the `total` best nodes as Drafts, or (pools=True) every candidate per row as
        lists (tokens, parents, scores, depths) for `_auto`."""
        B, k, dev = h.shape[0], self.topk, h.device
        base = torch.tensor(self.base, device=dev)
        logp = self._logits(h).log_softmax(-1)
        score, idx = logp.topk(k, -1)  # [B, k]
        tok = self.vocab[idx]
        parent = torch.full((B, k), -1, device=dev)
        depth = torch.ones(B, k, dtype=torch.long, device=dev)
        node_h = torch.zeros(B, k, h.shape[-1], dtype=h.dtype, device=dev)  # head output at each node
        parent_h = h[:, None].expand(B, k, -1)  # input feature of each node: its parent's output
        anc = torch.eye(k, dtype=torch.bool, device=dev).expand(B, k, k).clone()  # node sees node
        fed = torch.empty(B, 0, dtype=torch.long, device=dev)
        frontier = torch.arange(k, device=dev).expand(B, k)
        rows = torch.arange(B, device=dev)[:, None]
        for _ in range(self.depth - 1):
            fed = torch.cat([fed, frontier], 1)
            self.cache.rollback(self.base)
            mask = anc[rows[:, :, None], fed[:, :, None], fed[:, None, :]]
            pos = base[:, None] + depth[rows, fed] - 1
            out = self.head(
                parent_h[rows, fed], tok[rows, fed], self.target.embed, self.cache, positions=pos, tree_mask=mask
            )
            hf = out[:, -k:]  # outputs of the frontier
            node_h[rows, frontier] = hf
            lp = self._logits(hf).log_softmax(-1)  # [B, k, S]
            cs, ci = lp.topk(k, -1)
            cs = (score[rows, frontier][:, :, None] + cs).reshape(B, k * k)
            n0 = tok.shape[1]
            tok = torch.cat([tok, self.vocab[ci].reshape(B, k * k)], 1)
            score = torch.cat([score, cs], 1)
            par = frontier[:, :, None].expand(B, k, k).reshape(B, k * k)
            parent = torch.cat([parent, par], 1)
            depth = torch.cat([depth, depth[rows, par] + 1], 1)
            node_h = torch.cat([node_h, torch.zeros(B, k * k, h.shape[-1], dtype=h.dtype, device=dev)], 1)
            parent_h = torch.cat([parent_h, node_h[rows, par]], 1)
            M = tok.shape[1]
            grown = torch.zeros(B, M, M, dtype=torch.bool, device=dev)
            grown[:, :n0, :n0] = anc
            grown[:, n0:] = grown[rows, par]
            grown[:, torch.arange(n0, M), torch.arange(n0, M)] = True
            anc = grown
            frontier = n0 + cs.topk(k, -1).indices
        self.cache.rollback(self.base)
        if pools:
            return [[tok[b].tolist(), parent[b].tolist(), score[b].tolist(), depth[b].tolist()] for b in range(B)]
        return [self._select(tok[b], parent[b], score[b], depth[b]) for b in range(B)]

    def _select(self, tok: Tensor, parent: Tensor, score: Tensor, depth: Tensor) -> Draft:
        """The `total` best-scoring nodes (plus any missing ancestor), in depth order, as a Draft."""
        keep = set(score.topk(min(self.total, score.numel())).indices.tolist())
        return _draft(tok.tolist(), parent.tolist(), depth.tolist(), keep)


def _draft(toks: list[int], par: list[int], depth: list[int], keep: set[int]) -> Draft:
    """Nodes `keep` of a candidate pool (plus any missing ancestor), in depth order, as a Draft."""
    keep = set(keep)
    for i in list(keep):
        while par[i] >= 0 and par[i] not in keep:
            keep.add(par[i])
            i = par[i]
    order = sorted(keep, key=lambda i: (depth[i], i))
    where = {n: j + 1 for j, n in enumerate(order)}
    return Draft([toks[i] for i in order], [where[par[i]] if par[i] >= 0 else 0 for i in order])
