"""DeepEval (arXiv:2402.11281): deep-semantics multiple choice for multimodal models, with honest scoring,
blind baselines and description-augmented inference. See README.md for the map from paper to functions."""
