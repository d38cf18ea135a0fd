"""regularize: seed 003 (`003_9a4ff8a9bad5292c.txt`, K. Kahn), baseline vs. better CNN.

Two trials of the same CNN (`kahn`, see `tunefm models`):
- baseline: no regularization, SGD at lr 0.001, 20 epochs;
- better: dropout 0.5 on the two hidden FC layers, Adam at lr 1e-4, 40 epochs.
Both use the seed's negative log-likelihood loss on a log-softmax, which is
cross-entropy on the logits (`output=softmax`).

Choices where the seed is silent: batch size 64 (the PyTorch-Ignite notebook the seed
cites), no momentum for SGD. Both trials run to their own epoch count
(`max_epochs` per variant); ASHA compares them at equal epochs.

Reported: test accuracy and loss and the last epoch's training loss of each model
(baseline 0.6918 / 0.8203 / 0.8106, better 0.9089 / 0.2500 / 0.2023).
"""

from tunefm.study import Reported, Study

BASELINE = {"optimizer": "sgd", "lr": 0.001, "dropout": 0.0, "max_epochs": 20}
BETTER = {"optimizer": "adam", "lr": 0.0001, "dropout": 0.5, "max_epochs": 40}

STUDY = Study(
    name="regularize",
    description="baseline (SGD, 20 epochs) vs. better (dropout, Adam, 40 epochs)",
    variants=[BASELINE, BETTER],
    fixed={"model": "kahn", "batch_size": 64, "output": "softmax"},
    max_epochs=40,
    source="003_9a4ff8a9bad5292c.txt",
    reported=[
        Reported(where={"optimizer": "sgd"}, figures={"test_acc": 0.6918, "test_loss": 0.8203,
                                                      "final_train_loss": 0.8106}, note="baseline", epochs=20),
        Reported(where={"optimizer": "adam"}, figures={"test_acc": 0.9089, "test_loss": 0.2500,
                                                       "final_train_loss": 0.2023}, note="better", epochs=40),
    ],
)
