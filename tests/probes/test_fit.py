"""Probes: a number planted linearly in a synthetic model's residual stream is recovered (R^2 ~ 1); shuffled
targets and the layer before the plant are controls that must fail; metric definitions are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmlab.probes.capture import capture_batch, native_hidden_fn
from lmlab.probes.fit import direction, fit_predict, metrics


def _planted(tiny, n: int = 600):
    """Random token rows; block 0's output gets log2(value) * u added at every position (u fixed, unit)."""
    g = np.random.default_rng(0)
    values = g.integers(10, 10**6, size=n)
    u = torch.nn.functional.normalize(
        torch.randn(tiny.cfg.hidden_size, generator=torch.Generator().manual_seed(1)), dim=0
    )
    ids = [g.integers(3, 64, size=8).tolist() for _ in range(n)]
    acts = {1: [], 0: []}
    for s in range(0, n, 100):
        y = torch.tensor(np.log2(values[s : s + 100]), dtype=torch.float32)
        plant = {0: lambda x, y=y: x + 10.0 * y[:, None, None] * u}
        out = capture_batch(native_hidden_fn(tiny, hooks=plant), ids[s : s + 100], [[7]] * len(y), [0, 1])
        for l in acts:
            acts[l].append(out[l][:, 0])
    return {l: torch.cat(v).numpy() for l, v in acts.items()}, np.log2(values)[:, None], u.numpy()


def test_planted_number_is_recovered_and_controls_fail(tiny):
    X, y, u = _planted(tiny)
    tr, te = slice(0, 500), slice(500, None)
    probe, pred = fit_predict("ridge", X[1][tr], y[tr], X[1][te])
    m = metrics(y[te, 0], pred[:, 0])
    assert m["r2"] > 0.99 and m["pearson"] > 0.995
    gain = 10.0 * float(np.ravel(probe.coef_) @ u)  # the probe reads the plant with unit gain
    assert gain == pytest.approx(1.0, abs=0.05) and float(direction(probe) @ u) > 0
    shuffled = np.random.default_rng(1).permutation(y[tr])
    _, pred_s = fit_predict("ridge", X[1][tr], shuffled, X[1][te])
    assert metrics(y[te, 0], pred_s[:, 0])["r2"] < 0.1
    _, pred_0 = fit_predict("ridge", X[0][tr], y[tr], X[0][te])  # the embeddings, before the plant
    assert metrics(y[te, 0], pred_0[:, 0])["r2"] < 0.1


def test_mlp_probe_recovers_planted_number(tiny):
    X, y, _ = _planted(tiny)
    _, pred = fit_predict("mlp", X[1][:500], y[:500], X[1][500:], seed=0)
    assert metrics(y[500:, 0], pred[:, 0])["r2"] > 0.9


def test_metrics_exact():
    v = np.array([100.0, 2000.0, 12345.0, 7.0])
    y = np.log2(v)
    assert metrics(y, y) == {"pearson": pytest.approx(1.0), "r2": 1.0, "acc_1pct": 1.0, "mse": 0.0}
    assert metrics(y, np.log2(v * 1.009))["acc_1pct"] == 1.0  # 0.9 % off: inside the 1 % band
    assert metrics(y, np.log2(v * 1.02))["acc_1pct"] == 0.25  # 2 % off: only 7 -> 7.14 rounds back to 7
    far = metrics(y, np.log2(v * 1.1))
    assert far["acc_1pct"] == 0.0 and far["mse"] == pytest.approx(np.log2(1.1) ** 2)
    const = metrics(y, np.full_like(y, y.mean()))
    assert const["r2"] == pytest.approx(0.0) and const["pearson"] == 0.0


def test_length_control_separates_length_from_value():
    """Digit count as a covariate: activations that carry only the length explain none of the within-length
    variance (the control that must fail); activations that carry the value explain most of it."""
    from types import SimpleNamespace

    from lmlab.probes.experiment import length_controlled

    rng = np.random.default_rng(0)
    digits = np.repeat([2, 3, 4, 5], 60)
    vals = np.array([rng.integers(10 ** (d - 1), 10**d) for d in digits], dtype=float)
    y = np.log2(np.stack([vals, vals, 2 * vals], axis=1))
    noise = rng.normal(0, 0.01, (len(digits), 3, 8))
    length_only = noise.copy()
    length_only[:, 2, 0] = digits
    value = length_only.copy()
    value[:, 2, 1] = y[:, 2]
    tr, te = np.arange(0, 240, 2), np.arange(1, 240, 2)
    for X, lo, hi in ((length_only, -0.2, 0.1), (value, 0.9, 1.01)):
        store = SimpleNamespace(layers=[0], layer=lambda _l, X=X: X)
        out = length_controlled(store, tr, te, y, digits, 0.1)
        assert lo < out["partial_r2"] < hi
        assert len(out["sq_err"]) == len(te)
