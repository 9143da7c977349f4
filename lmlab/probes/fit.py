"""Probes and the paper's metrics: Ridge (alpha 0.1, as NumProbe) and MLP regressors from scikit-learn,
predicting log2 of a number from one layer's activations at one position.

Metrics, all on held-out rows: Pearson rho between prediction and log2 target (centred; NumProbe's
`r_regression(center=False)` is the uncentred cosine, which is higher for all-positive targets), R^2,
approximate accuracy (2**prediction rounded lies within 1 % of the value) and MSE in log2 space.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def make_probe(kind: str, alpha: float = 0.1, seed: int = 0) -> Any:
    """A fresh multi-output regressor: "ridge" (linear) or "mlp" (one hidden layer, standardised inputs)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return Ridge(alpha=alpha)
    if kind == "mlp":
        mlp = MLPRegressor(
            hidden_layer_sizes=(256,),
            alpha=1e-3,
            learning_rate_init=1e-3,
            max_iter=300,
            early_stopping=True,
            n_iter_no_change=10,
            random_state=seed,
        )
        # standardised inputs and targets: log2 values of 10-digit numbers would otherwise stall Adam
        return TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())
    raise ValueError(f"unknown probe kind {kind!r}")


def fit_predict(
    kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float = 0.1, seed: int = 0
) -> tuple[Any, np.ndarray]:
    """Fit on [N, H] -> [N, K] targets; returns the fitted probe and its [M, K] test predictions."""
    import warnings

    probe = make_probe(kind, alpha, seed)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning from early-stopped MLPs is expected
        probe.fit(x_train.astype(np.float64), y_train if y_train.shape[1] > 1 else y_train[:, 0])
    pred = np.asarray(probe.predict(x_test.astype(np.float64)), dtype=np.float64).reshape(len(x_test), -1)
    return probe, pred


def metrics(y_log2: np.ndarray, pred_log2: np.ndarray) -> dict[str, float]:
    """Pearson, R^2, accuracy within 1 % and MSE for one target (log2 space in, value space for accuracy)."""
    y = np.asarray(y_log2, dtype=np.float64)
    p = np.asarray(pred_log2, dtype=np.float64)
    mse = float(np.mean((y - p) ** 2))
    var = float(np.var(y))
    r2 = 1.0 - mse / var if var > 0 else float("nan")
    pearson = float(np.corrcoef(y, p)[0, 1]) if np.std(p) > 0 and var > 0 else 0.0
    acc = float(np.mean(within_1pct(y, p)))
    return {"pearson": pearson, "r2": r2, "acc_1pct": acc, "mse": mse}


def within_1pct(y_log2: np.ndarray, pred_log2: np.ndarray) -> np.ndarray:
    """Per item: does 2**prediction, rounded, lie within 1 % of the value (the paper's approximate accuracy)?"""
    value = np.rint(np.exp2(np.asarray(y_log2, dtype=np.float64)))
    guess = np.rint(np.exp2(np.clip(np.asarray(pred_log2, dtype=np.float64), -60, 60)))
    return np.abs(guess - value) <= 0.01 * value


def direction(probe: Any, k: int = 0) -> np.ndarray:
    """Unit vector along a linear probe's weights for output k (the steering direction)."""
    w = np.asarray(probe.coef_, dtype=np.float64)
    w = w[k] if w.ndim == 2 else w
    n = np.linalg.norm(w)
    return w / n if n > 0 else w
