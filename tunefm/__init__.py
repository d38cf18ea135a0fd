"""tunefm: hyperparameter search for small PyTorch image classifiers on Fashion-MNIST, on Ray Tune.

Layers, each importing only from those below it (tests/test_layers.py holds them):
cli (the `tunefm` command) · analysis/ (answers from a run folder) · tune/ (everything that
talks to Ray) · study and searchers/ (what to search) · run/ (the run folder) · engine/
(plain PyTorch training).
"""
