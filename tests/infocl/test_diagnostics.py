"""Effective rank on toy tensors: exact on equal-spectrum subspaces, rank 1, isotropic noise, invariances."""

from __future__ import annotations

import math

import torch

from lmlab.infocl.diagnostics import effective_rank


def test_equal_singular_values_give_the_rank_exactly():
    # rows +-e_i (i < k): centred, the singular values are k equal ones, so erank = k
    for k in (1, 3, 7):
        eye = torch.eye(16)[:k]
        assert math.isclose(effective_rank(torch.cat([eye, -eye])), k, rel_tol=1e-9)


def test_rank_one_and_isotropic_and_degenerate():
    g = torch.Generator().manual_seed(0)
    line = torch.randn(50, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert math.isclose(effective_rank(line), 1.0, rel_tol=1e-3)  # float32 rounding leaves ~1e-7 directions
    iso = torch.randn(4000, 16, generator=g)
    assert 15.5 < effective_rank(iso) <= 16  # near full rank for isotropic noise
    assert effective_rank(torch.ones(5, 8)) == 0.0 and effective_rank(torch.randn(1, 8)) == 0.0


def test_invariant_to_shift_scale_rotation_and_drops_with_compression():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 12, generator=g) * torch.linspace(0.2, 2.0, 12)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    e = effective_rank(z)
    assert math.isclose(effective_rank(3 * z @ q + 5), e, rel_tol=1e-5)  # float32 matmul
    squashed = z.clone()
    squashed[:, :8] *= 0.01  # a bottleneck that keeps 4 directions
    assert effective_rank(squashed) < 0.5 * e
