"""tunefm: hyperparameter search for small PyTorch image classifiers on Fashion-MNIST, on Ray Tune.

Modules: data (load and split), models (registry), study (what to search),
trainable (one trial), search (the Tuner), store (Parquet), analysis (pandas answers),
cli (the `tunefm` command).
"""
