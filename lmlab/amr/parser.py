"""Tokenizer with the AMR vocabulary extension, training of the three parsers, batched beam-search parsing.

Inputs follow RGL's "unified input" (official dataset.py):
    text             <s> x </s> <AMR> <mask> </AMR>
    reversed graph   <s> <mask> </s> <AMR> <dfs_NRL> y^r </AMR>
    target           y </AMR>, decoder start <AMR>
The vocabulary is a byte-level BPE trained on the corpus plus the AMR tokens (AMRBART/SPRING extension): the
specials, `<pointer:k>`, every role and every concept seen at least twice in training, added with
`tokenizer.add_tokens` so the HF checkpoint carries them. A graph token outside that set is spelled in BPE pieces
(the first piece starts with the byte-level space marker, which is how the pieces are grouped back).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lmlab.core.errors import LmlabError

from .graphs import AmrGraph
from .linearize import POINTER, Decoded, delinearize, linearize
from .loss import label_smoothed_nll, r_schedule, rgl_loss
from .model import RglBart, tiny_config

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<AMR>", "</AMR>", "<dfs_NLR>", "<dfs_NRL>", "<lit>", "</lit>"]
MAX_POINTERS = 151  # pointers 0..150, as AMRBART


class AmrTokenizer:
    """A HF fast tokenizer + the graph-token <-> id mapping."""

    def __init__(self, hf):
        self.hf = hf
        # Added tokens that already exist as BPE pieces ('all', 'i') keep the piece's id: those are not AMR
        # tokens for the grouping, so only ids past the base vocabulary (and the specials) count.
        base = hf.backend_tokenizer.get_vocab_size(with_added_tokens=False)
        self.added = {t: i for t, i in hf.get_added_vocab().items() if i >= base or t in SPECIALS}
        self.id_to_added = {i: t for t, i in self.added.items()}
        self.sid = {t: self.added.get(t, hf.convert_tokens_to_ids(t)) for t in SPECIALS}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, graphs: list[AmrGraph], vocab_size: int = 2000) -> AmrTokenizer:
        from lmlab.core.train import train_bpe_tokenizer

        lins = [linearize(g.tree) for g in graphs]
        counts = Counter(t for lin in lins for t in lin)
        texts = [g.sentence for g in graphs] + [" ".join(lin) for lin in lins]
        hf = train_bpe_tokenizer(texts, vocab_size, special_tokens=["</s>", "<pad>"])
        roles = sorted(t for t in counts if t.startswith(":"))
        concepts = sorted(
            t for t, c in counts.items() if c >= 2 and not t.startswith((":", "<", '"')) and t not in "()"
        )
        hf.add_special_tokens({"additional_special_tokens": [t for t in SPECIALS if t not in ("</s>", "<pad>")]})
        hf.add_tokens(["(", ")"] + [f"<pointer:{k}>" for k in range(MAX_POINTERS)] + roles + concepts)
        hf.bos_token, hf.unk_token, hf.mask_token = "<s>", "<unk>", "<mask>"
        return cls(hf)

    def save(self, path: Path) -> None:
        self.hf.save_pretrained(str(path))

    @classmethod
    def load(cls, path: Path) -> AmrTokenizer:
        from transformers import PreTrainedTokenizerFast

        return cls(PreTrainedTokenizerFast.from_pretrained(str(path)))

    def __len__(self) -> int:
        return len(self.hf)

    def graph_ids(self, tokens: list[str]) -> list[int]:
        out: list[int] = []
        for t in tokens:
            if t in self.added:
                out.append(self.added[t])
                continue
            ids = self._cache.get(t)
            if ids is None:
                ids = self._cache[t] = self.bpe(" " + t)
            out.extend(ids)
        return out

    def bpe(self, text: str) -> list[int]:
        """Byte-level BPE pieces only: HF's `encode` would also match added AMR tokens inside words ('-' in
        'real-04'), which breaks the grouping of pieces back into tokens."""
        backend = self.hf.backend_tokenizer
        pieces = backend.pre_tokenizer.pre_tokenize_str(text)
        return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]

    def graph_tokens(self, ids: list[int]) -> list[str]:
        """Inverse of graph_ids; stops at </AMR>."""
        toks: list[str] = []
        pieces: list[str] = []

        def flush():
            if pieces:
                toks.append(self.hf.convert_tokens_to_string(pieces).strip())
                pieces.clear()

        end, pad = self.sid["</AMR>"], self.sid["<pad>"]
        for i in ids:
            if i == end:
                break
            if i == pad or i == self.sid["<AMR>"]:
                continue
            if i in self.id_to_added:
                flush()
                toks.append(self.id_to_added[i])
                continue
            piece = self.hf.convert_ids_to_tokens(i)
            if piece.startswith("Ġ"):
                flush()
            pieces.append(piece)
        flush()
        return [t for t in toks if t]

    def text_input(self, sentence: str) -> list[int]:
        s = self.sid
        return [
            s["<s>"],
            *self.bpe(sentence),
            s["</s>"],
            s["<AMR>"],
            s["<mask>"],
            s["</AMR>"],
        ]

    def graph_input(self, tokens: list[str]) -> list[int]:
        s = self.sid
        return [s["<s>"], s["<mask>"], s["</s>"], s["<AMR>"], s["<dfs_NRL>"], *self.graph_ids(tokens), s["</AMR>"]]

    def target(self, tokens: list[str]) -> list[int]:
        return [*self.graph_ids(tokens), self.sid["</AMR>"]]


_WORD = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")
_SENSE = re.compile(r"^(.*[^\d-])(-\d\d+)$")
_SENSE_PIECE = re.compile(r"^-\d\d+$")


class WordTokenizer:
    """A word-level vocabulary shared by sentence and graph, for parsers trained from scratch on small corpora.

    Why: with the BPE vocabulary, the sentence word `prince` (BPE pieces) and the concept `prince` (an added token)
    have unrelated embeddings, so a from-scratch model must learn every word -> concept correspondence from a
    thousand examples. Here a sentence word and a concept (or a frame's lemma) of the same spelling are the SAME
    id, and BART ties input and output embeddings, so copying a word into the graph is the easy thing to learn.
    A frame is two pieces, lemma + sense (`see-01` -> `see`, `-01`): the lemma is shared with the word and
    the sense pieces are a small closed set. Sentence words are lower-cased; out-of-vocabulary items become `<unk>`
    (a concept `<unk>` decodes as `thing`). Same interface as `AmrTokenizer`; saved as `amr_vocab.json`.
    """

    FILE = "amr_vocab.json"

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.sid = {t: self.ids[t] for t in SPECIALS}

    @staticmethod
    def words(sentence: str) -> list[str]:
        return [w.lower() for w in _WORD.findall(sentence)]

    @staticmethod
    def pieces(token: str) -> list[str]:
        m = _SENSE.match(token)
        return [m.group(1), m.group(2)] if m and not token.startswith('"') else [token]

    @classmethod
    def train(cls, graphs: list[AmrGraph], min_count: int = 1) -> WordTokenizer:
        counts: Counter = Counter()
        for g in graphs:
            counts.update(cls.words(g.sentence))
            for t in linearize(g.tree):
                if not POINTER.match(t):
                    counts.update(cls.pieces(t))
        fixed = SPECIALS + ["(", ")"] + [f"<pointer:{k}>" for k in range(MAX_POINTERS)]
        rest = sorted(
            (t for t, c in counts.items() if c >= min_count and t not in fixed), key=lambda t: (-counts[t], t)
        )
        return cls(fixed + rest)

    def save(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.FILE).write_text(json.dumps(self.vocab))

    @classmethod
    def load(cls, path: Path) -> WordTokenizer:
        return cls(json.loads((Path(path) / cls.FILE).read_text()))

    def __len__(self) -> int:
        return len(self.vocab)

    def _id(self, t: str) -> int:
        return self.ids.get(t, self.sid["<unk>"])

    def graph_ids(self, tokens: list[str]) -> list[int]:
        return [self._id(p) for t in tokens for p in self.pieces(t)]

    def graph_tokens(self, ids: list[int]) -> list[str]:
        """Inverse of graph_ids (a sense piece joins the token before it); stops at </AMR>."""
        s = self.sid
        toks: list[str] = []
        for i in ids:
            if i == s["</AMR>"]:
                break
            if i in (s["<pad>"], s["<AMR>"], s["<s>"]):
                continue
            t = self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>"
            t = "thing" if t == "<unk>" else t
            if _SENSE_PIECE.match(t) and toks and toks[-1] not in ("(", ")") and not toks[-1].startswith((":", "<")):
                toks[-1] += t
            else:
                toks.append(t)
        return toks

    def text_input(self, sentence: str) -> list[int]:
        s = self.sid
        return [s["<s>"], *(self._id(w) for w in self.words(sentence)), s["</s>"], s["<AMR>"], s["<mask>"], s["</AMR>"]]

    def graph_input(self, tokens: list[str]) -> list[int]:
        s = self.sid
        return [s["<s>"], s["<mask>"], s["</s>"], s["<AMR>"], s["<dfs_NRL>"], *self.graph_ids(tokens), s["</AMR>"]]

    def target(self, tokens: list[str]) -> list[int]:
        return [*self.graph_ids(tokens), self.sid["</AMR>"]]


def load_tokenizer(path: Path):
    """The tokenizer saved in a parser or tokenizer directory (word vocabulary or HF BPE)."""
    return WordTokenizer.load(path) if (Path(path) / WordTokenizer.FILE).is_file() else AmrTokenizer.load(path)


def _pad(rows: list[list[int]], value: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [r[:max_len] for r in rows]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), value, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@dataclass
class TrainSettings:
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3  # from scratch (the official 1e-5 is for fine-tuning AMRBART-large)
    warmup: int = 100
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    ffn: int = 1024
    vocab_size: int = 2000
    gate_dim: int = 512
    max_source: int = 256
    max_target: int = 512
    kl: bool = True
    fixed_r: float | None = None  # ablation: constant r instead of 0.8 -> 0.2
    detach_teacher: bool = False
    seed: int = 0
    history: list[dict] = field(default_factory=list)


def _batches(n: int, batch_size: int, seed: int, lengths: list[int]) -> Iterator[list[int]]:
    """Endless, seeded, length-bucketed batches of example indices."""
    rng = random.Random(seed)
    while True:
        idx = list(range(n))
        rng.shuffle(idx)
        chunks = [sorted(idx[i : i + batch_size * 20], key=lambda j: lengths[j]) for i in range(0, n, batch_size * 20)]
        batches = [c[i : i + batch_size] for c in chunks for i in range(0, len(c), batch_size)]
        rng.shuffle(batches)
        yield from batches


class Parser:
    """A trained parser: `plain` (one order, stock BART) or `rgl` (needs a pass-1 reverse parser for silver y^r)."""

    def __init__(self, tok: AmrTokenizer, model, order: str = "nlr", reverse: Parser | None = None):
        self.tok, self.model, self.order, self.reverse = tok, model, order, reverse
        self.model.eval()

    @property
    def kind(self) -> str:
        return "rgl" if isinstance(self.model, RglBart) else "plain"

    # ---- persistence (HF checkpoint dirs) ----
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        self.tok.save(path)
        (path / "lmlab_amr.json").write_text(json.dumps({"order": self.order, "kind": self.kind}))
        if self.reverse is not None:
            self.reverse.save(path / "reverse")

    @classmethod
    def load(cls, path: Path) -> Parser:
        from transformers import BartForConditionalGeneration

        path = Path(path)
        if not (path / "config.json").is_file():
            raise LmlabError(
                f"{path}: not a parser checkpoint (no config.json)", hint="train one with `lmlab amr train`"
            )
        meta = json.loads((path / "lmlab_amr.json").read_text()) if (path / "lmlab_amr.json").is_file() else {}
        kind = meta.get("kind", "plain")
        model_cls = RglBart if kind == "rgl" else BartForConditionalGeneration
        model = model_cls.from_pretrained(str(path))
        reverse = cls.load(path / "reverse") if kind == "rgl" else None
        return cls(load_tokenizer(path), model, meta.get("order", "nlr"), reverse)

    # ---- parsing ----
    @torch.no_grad()
    def parse_tokens(
        self,
        sentences: list[str],
        beam: int = 5,
        batch_size: int = 32,
        silver: list[list[str]] | None = None,
        max_len: int | None = None,
    ) -> list[list[str]]:
        """Linearized graphs (in this parser's order) for the sentences, batched by length, beam search."""
        if self.kind == "rgl" and silver is None:
            assert self.reverse is not None, "an RGL parser needs its pass-1 reverse parser"
            silver = self.reverse.parse_tokens(sentences, beam=beam, batch_size=batch_size, max_len=max_len)
        s = self.tok.sid
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out: list[list[str]] = [[] for _ in sentences]
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            limit = self.model.config.max_position_embeddings - 2  # BART's learned positions are offset by 2
            ids, mask = _pad([self.tok.text_input(sentences[i]) for i in idx], s["<pad>"], limit)
            longest = int(mask.sum(1).max())
            gen = dict(
                num_beams=beam,
                max_new_tokens=min(max_len or 4 * longest + 32, limit),
                decoder_start_token_id=s["<AMR>"],
                eos_token_id=s["</AMR>"],
                pad_token_id=s["<pad>"],
                bos_token_id=s["<s>"],
                early_stopping=beam > 1,
                do_sample=False,
            )
            if self.kind == "rgl":
                gids, gmask = _pad([self.tok.graph_input(silver[i]) for i in idx], s["<pad>"], limit)
                seqs = self.model.rgl_generate(ids, mask, gids, gmask, **gen)
            else:
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, **gen)
            for row, i in zip(seqs.tolist(), idx):
                out[i] = self.tok.graph_tokens(row)
        return out

    def parse(
        self, sentences: list[str], beam: int = 5, batch_size: int = 32, max_len: int | None = None
    ) -> list[AmrGraph]:
        """Sentences -> graphs; never empty: malformed output is repaired and the repairs stored in `status`."""
        toks = self.parse_tokens(sentences, beam=beam, batch_size=batch_size, max_len=max_len)
        out = []
        for k, (sent, t) in enumerate(zip(sentences, toks)):
            dec: Decoded = delinearize(t)
            out.append(
                AmrGraph(id=f"{k + 1}", metadata={"id": f"{k + 1}", "snt": sent}, tree=dec.tree, status=dec.repairs)
            )
        return out


def _plain_model(tok: AmrTokenizer, st: TrainSettings):
    from transformers import BartForConditionalGeneration

    s = tok.sid
    cfg = tiny_config(
        len(tok),
        s["<pad>"],
        s["<s>"],
        s["</AMR>"],
        s["<AMR>"],
        d=st.d_model,
        layers=st.layers,
        heads=st.heads,
        ffn=st.ffn,
        max_len=max(st.max_source, st.max_target) + 8,
    )
    torch.manual_seed(st.seed)
    return BartForConditionalGeneration(cfg)


def _targets(tok: AmrTokenizer, rows: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = tok.sid
    labels, _ = _pad(rows, -100, max_len)
    dec = torch.full_like(labels, s["<pad>"])
    dec[:, 0] = s["<AMR>"]
    dec[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, s["<pad>"])
    return labels, dec


def _train_config(st):
    """The optimiser settings both parsers train with (BART's betas; AdamW + cosine from core.train)."""
    from lmlab.core.train import TrainConfig

    return TrainConfig(
        steps=st.steps,
        lr=st.lr,
        warmup=st.warmup,
        weight_decay=st.weight_decay,
        seed=st.seed,
        log_every=100,
        betas=(0.9, 0.98),
    )


def train_plain(
    graphs: list[AmrGraph],
    order: str,
    st: TrainSettings,
    tok: AmrTokenizer | WordTokenizer | None = None,
    log=None,
    init: Parser | None = None,
) -> Parser:
    """A one-order parser (NLR default or NRL reverse): label-smoothed CE, AdamW, warm-up + cosine. `init`:
    continue from a copy of that parser's weights (and use its tokenizer) instead of a fresh model."""
    import copy

    from lmlab.core.train import train

    tok = init.tok if init is not None else (tok or AmrTokenizer.train(graphs, st.vocab_size))
    src = [tok.text_input(g.sentence) for g in graphs]
    tgt = [tok.target(linearize(g.tree, order)) for g in graphs]
    model = copy.deepcopy(init.model) if init is not None else _plain_model(tok, st)
    pad = tok.sid["<pad>"]
    batches = (
        [src[i] for i in b] + [tgt[i] for i in b]
        for b in _batches(len(graphs), st.batch_size, st.seed, [len(t) for t in tgt])
    )

    def loss_fn(m, rows):
        k = len(rows) // 2
        ids, mask = _pad(rows[:k], pad, st.max_source)
        labels, dec = _targets(tok, rows[k:], st.max_target)
        logits = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        return label_smoothed_nll(logits, labels, st.label_smoothing)

    st.history = train(model, batches, loss_fn, _train_config(st), log=log)
    return Parser(tok, model, order)


def train_rgl(
    graphs: list[AmrGraph],
    silver: list[list[str]],
    reverse: Parser,
    st: TrainSettings,
    log=None,
    init: Parser | None = None,
) -> Parser:
    """Pass 2 of RGL: every step a teacher pass (gold y^r) and a student pass (silver y^r) of the same model.
    The BART part starts fresh, or from `init` (a trained plain parser: the stand-in for the pretrained
    AMRBART the official code starts from); the new parts are initialised as the official code does."""
    from lmlab.core.train import train

    tok = reverse.tok
    base = init.model if init is not None else _plain_model(tok, st)
    model = RglBart.from_plain(base, gate_dim=st.gate_dim)
    pad = tok.sid["<pad>"]
    src = [tok.text_input(g.sentence) for g in graphs]
    gold_r = [tok.graph_input(linearize(g.tree, "nrl")) for g in graphs]
    silver_r = [tok.graph_input(t) for t in silver]
    tgt = [tok.target(linearize(g.tree, "nlr")) for g in graphs]
    calls = [0]
    batches = (b for b in _batches(len(graphs), st.batch_size, st.seed, [len(t) for t in tgt]))

    def loss_fn(m, b):
        ids, mask = _pad([src[i] for i in b], pad, st.max_source)
        gids, gmask = _pad([gold_r[i] for i in b], pad, st.max_target)
        sids, smask = _pad([silver_r[i] for i in b], pad, st.max_target)
        labels, dec = _targets(tok, [tgt[i] for i in b], st.max_target)
        z_t, z_s = rgl_pass_logits(m, ids, mask, (gids, gmask), (sids, smask), dec)
        r = st.fixed_r if st.fixed_r is not None else r_schedule(calls[0], st.steps)
        calls[0] += 1
        return rgl_loss(z_t, z_s, labels, r, eps=st.label_smoothing, kl=st.kl, detach_teacher=st.detach_teacher)

    st.history = train(model, batches, loss_fn, _train_config(st), log=log)
    return Parser(tok, model, "nlr", reverse=reverse)


def rgl_pass_logits(model: RglBart, ids, mask, gold_rev, silver_rev, dec) -> tuple[torch.Tensor, torch.Tensor]:
    """The two forwards of one RGL step: teacher (text + gold y^r) and student (text + silver y^r)."""
    z_teacher = model.rgl_forward(ids, mask, gold_rev[0], gold_rev[1], dec)
    z_student = model.rgl_forward(ids, mask, silver_rev[0], silver_rev[1], dec)
    return z_teacher, z_student


def settings_key(st: TrainSettings, extra: str = "") -> str:
    import hashlib

    d = {k: v for k, v in asdict(st).items() if k != "history"}
    return hashlib.sha256((json.dumps(d, sort_keys=True) + extra).encode()).hexdigest()[:16]


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


__all__ = [
    "AmrTokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "Parser",
    "TrainSettings",
    "train_plain",
    "train_rgl",
    "POINTER",
]
