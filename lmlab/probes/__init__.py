"""Number probes (arXiv:2401.03735, "Language Models Encode the Value of Numbers Linearly").

Capture residual-stream activations at chosen layers and positions (native engine or any transformers
model, sharded to disk, resumable), fit Ridge / MLP probes for log2 of the numbers in addition prompts,
and steer the model along probe directions. See README.md for the map from paper to functions.
"""

from .capture import ActivationStore, capture, capture_batch, hf_hidden_fn, native_hidden_fn
from .data import Problem, encode, generate_problems, load_problems
from .fit import fit_predict, metrics

__all__ = [
    "ActivationStore",
    "Problem",
    "capture",
    "capture_batch",
    "encode",
    "fit_predict",
    "generate_problems",
    "hf_hidden_fn",
    "load_problems",
    "metrics",
    "native_hidden_fn",
]
