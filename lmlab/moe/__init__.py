"""DeepSeekMoE (arXiv:2401.06066): fine-grained + shared experts, balance losses, sorted grouped dispatch.

`layer.MoE` / `layer.MoEConfig` is the layer (Dense, Switch, GShard and DeepSeekMoE are configurations of it),
`model.MoETransformer` the decoder LM, `experiment` the paper's small-scale comparison, `bench` the speed check.
"""
