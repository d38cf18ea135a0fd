"""The training engine: plain PyTorch, no Ray, no pandas.

Data splits as uint8 arrays, the model registry, the training state and its epoch, the
loops (layouts, kernels, captured graphs), fused trial groups, calibration, the decision
of how one trial trains (`training_plan`) and the measurements behind `tunefm bench`.

May import: torch, numpy, the standard library, `tunefm.errors`, `tunefm.optional` and
modules of this package. Importing this package itself loads nothing (so `engine.data`
and `engine.trial_config` stay free of torch for the layers above).
"""
