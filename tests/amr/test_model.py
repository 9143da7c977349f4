"""RGL model and loss on toy tensors (paper section 3.2-3.3; official modeling_bart.py / seq2seq_trainer.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BartForConditionalGeneration

from lmlab.amr.loss import kl_teacher_student, label_smoothed_nll, r_schedule, rgl_loss
from lmlab.amr.model import RglBart, tiny_config
from lmlab.amr.parser import rgl_pass_logits

V = 40


def _models(seed=0):
    torch.manual_seed(seed)
    cfg = tiny_config(V, pad=1, bos=0, eos=2, dec_start=5, d=16, layers=2, heads=2, ffn=32, max_len=64, dropout=0.0)
    plain = BartForConditionalGeneration(cfg).eval()
    return plain, RglBart.from_plain(plain, gate_dim=24).eval()


def _batch(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, V, (b, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    rev = torch.randint(6, V, (b, 9), generator=g)
    rmask = torch.ones_like(rev)
    dec = torch.randint(6, V, (b, 6), generator=g)
    dec[:, 0] = 5
    return ids, mask, rev, rmask, dec


def test_label_smoothed_nll_matches_fairseq_formula():
    torch.manual_seed(0)
    z = torch.randn(2, 4, V)
    y = torch.randint(0, V, (2, 4))
    y[1, 3] = -100
    lp = F.log_softmax(z, -1)
    yy = y.clamp(min=0)
    per = 0.9 * -lp.gather(-1, yy[..., None])[..., 0] + (0.1 / V) * -lp.sum(-1)
    per[1, 3] = 0.0
    assert label_smoothed_nll(z, y, 0.1).item() == pytest.approx(per.sum().item() / 8, rel=1e-6)  # pads counted
    # eps = 0: plain NLL averaged over all 8 positions, including the pad
    assert label_smoothed_nll(z, y, 0.0).item() == pytest.approx(
        F.cross_entropy(z.view(-1, V), y.view(-1), ignore_index=-100, reduction="sum").item() / 8, rel=1e-6
    )


def test_kl_term_direction_and_zero():
    torch.manual_seed(1)
    zt, zs = torch.randn(2, 3, V), torch.randn(2, 3, V)
    pt, ls = F.softmax(zt, -1), F.log_softmax(zs, -1)
    want = (pt * (pt.log() - ls)).sum(-1).mean()
    assert kl_teacher_student(zt, zs).item() == pytest.approx(want.item(), rel=1e-5)
    assert kl_teacher_student(zt, zt).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_teacher_student(zt, zs).item() != pytest.approx(kl_teacher_student(zs, zt).item(), rel=1e-3)


def test_teacher_gradient_flows_unless_detached():
    zt = torch.randn(1, 2, V, requires_grad=True)
    zs = torch.randn(1, 2, V, requires_grad=True)
    kl_teacher_student(zt, zs).backward()
    assert zt.grad is not None and zt.grad.abs().sum() > 0  # official code: teacher not detached
    zt.grad = None
    kl_teacher_student(zt, zs, detach_teacher=True).backward()
    assert zt.grad is None


def test_r_schedule_endpoints_and_geometric():
    assert r_schedule(0, 1000) == pytest.approx(0.8)
    assert r_schedule(1000, 1000) == pytest.approx(0.2)
    assert r_schedule(500, 1000) == pytest.approx(0.4)  # geometric mean of 0.8 and 0.2
    assert r_schedule(250, 1000) == pytest.approx(0.8 * (0.25**0.25))
    assert math.isclose(r_schedule(10, 1000) / r_schedule(9, 1000), r_schedule(501, 1000) / r_schedule(500, 1000))


def test_rgl_loss_is_the_sum_of_its_terms():
    torch.manual_seed(2)
    zt, zs = torch.randn(2, 3, V), torch.randn(2, 3, V)
    y = torch.randint(0, V, (2, 3))
    loss, parts = rgl_loss(zt, zs, y, 0.7)
    want = 0.7 * label_smoothed_nll(zt, y) + 0.3 * label_smoothed_nll(zs, y) + kl_teacher_student(zt, zs)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    no_kl, p2 = rgl_loss(zt, zs, y, 0.7, kl=False)
    assert no_kl.item() == pytest.approx(want.item() - parts["kl"], rel=1e-5) and p2["kl"] == 0.0


def test_initialisation_follows_official_code():
    plain, rgl = _models()
    for (k, a), b in zip(plain.model.encoder.state_dict().items(), rgl.amr_encoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert rgl.amr_encoder.embed_tokens is rgl.model.shared
    layer = rgl.model.decoder.layers[0]
    assert torch.equal(layer.amr_attn_layer_norm.weight, layer.encoder_attn_layer_norm.weight)
    assert torch.equal(rgl.model.decoder.layers[1].fc1.weight, plain.model.decoder.layers[1].fc1.weight)


def test_gate_is_one_scalar_per_position_and_layer():
    _, rgl = _models()
    ids, mask, rev, rmask, dec = _batch()
    rgl.rgl_forward(ids, mask, rev, rmask, dec)
    for layer in rgl.model.decoder.layers:
        g = layer.last_gate
        assert g.shape == (3, 6, 1) and bool(((g > 0) & (g < 1)).all())
        assert layer.gate[0].weight.shape == (24, 16) and layer.gate[2].weight.shape == (1, 24)


def test_teacher_reads_gold_reversed_graph_student_does_not():
    _, rgl = _models()
    ids, mask, rev, rmask, dec = _batch()
    silver = rev.flip(1)
    zt, zs = rgl_pass_logits(rgl, ids, mask, (rev, rmask), (silver, rmask), dec)
    rev2 = rev.clone()
    rev2[:, 2] = (rev2[:, 2] + 1 - 6) % (V - 6) + 6  # perturb the gold reversed graph
    zt2, zs2 = rgl_pass_logits(rgl, ids, mask, (rev2, rmask), (silver, rmask), dec)
    assert (zt - zt2).abs().max() > 1e-4  # the teacher output depends on gold y^r
    assert torch.equal(zs, zs2)  # the student never sees gold
    # and the text still matters too
    ids2 = ids.clone()
    ids2[:, 1] = (ids2[:, 1] + 1 - 6) % (V - 6) + 6
    assert (rgl.rgl_forward(ids2, mask, rev, rmask, dec) - zt).abs().max() > 1e-4


def test_hf_generate_with_cache_agrees_with_teacher_forcing():
    """Beam expansion + KV cache through the concatenated encoder states give the same tokens as a full forward."""
    _, rgl = _models(3)
    ids, mask, rev, rmask, _ = _batch(3)
    out = rgl.rgl_generate(
        ids,
        mask,
        rev,
        rmask,
        num_beams=1,
        do_sample=False,
        max_new_tokens=6,
        decoder_start_token_id=5,
        eos_token_id=2,
        pad_token_id=1,
    )
    logits = rgl.rgl_forward(ids, mask, rev, rmask, out[:, :-1])
    assert torch.equal(logits.argmax(-1), out[:, 1:])
    beams = rgl.rgl_generate(
        ids,
        mask,
        rev,
        rmask,
        num_beams=3,
        do_sample=False,
        max_new_tokens=6,
        decoder_start_token_id=5,
        eos_token_id=2,
        pad_token_id=1,
    )
    assert beams.shape[0] == 3


def test_save_and_load_round_trip(tmp_path):
    _, rgl = _models()
    rgl.save_pretrained(tmp_path)
    back = RglBart.from_pretrained(tmp_path).eval()
    ids, mask, rev, rmask, dec = _batch()
    assert torch.allclose(rgl.rgl_forward(ids, mask, rev, rmask, dec), back.rgl_forward(ids, mask, rev, rmask, dec))
