"""cnn5: seed 001 (`001_b3a5012d14491ce7.txt`, Advertima assignment), its Table 1.

CNN_1 to CNN_5 (`cnn1`..`cnn5`), each trained with and without augmentation and with a
softmax or a sigmoid output: 5 x 2 x 2 = 20 trials, all at the seed's fixed
hyperparameters: Adam, lr 0.004, L2 weight decay 0.001, batch size 128, 10 epochs,
dropout 0.5 (CNN_3, the only one with dropout).

The seed's split is tunefm's default: 50,000 train / 10,000 validation from the
training images, the 10,000 test images kept apart. Augmentation is a random crop
(up to 2 px shift) and a horizontal flip per image. The sigmoid output is trained
with binary cross-entropy on one-hot targets. Every trial is evaluated on the test
set (`test_top` = 4 configurations per model), since Table 1 reports test accuracy for
each of them.
"""

from tunefm.study import Reported, Study

# Table 1: test accuracy; columns (augment, output).
TABLE_1 = {
    "cnn1": (0.8916, 0.8913, 0.8411, 0.8338),
    "cnn2": (0.9025, 0.8943, 0.8585, 0.8661),
    "cnn3": (0.8850, 0.8837, 0.8156, 0.8472),
    "cnn4": (0.8695, 0.8559, 0.8120, 0.7939),
    "cnn5": (0.8823, 0.8801, 0.8593, 0.8498),
}
COLUMNS = [(False, "softmax"), (True, "softmax"), (False, "sigmoid"), (True, "sigmoid")]

STUDY = Study(
    name="cnn5",
    description="CNN_1-5 x augmentation x softmax/sigmoid, fixed Adam settings",
    grid={
        "model": ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"],
        "augment": [False, True],
        "output": ["softmax", "sigmoid"],
    },
    fixed={"optimizer": "adam", "lr": 0.004, "weight_decay": 0.001, "batch_size": 128},
    max_epochs=10,
    source="001_b3a5012d14491ce7.txt",
    test_top=4,
    reported=[
        Reported(where={"model": model, "augment": augment, "output": output}, figures={"test_acc": acc}, epochs=10)
        for model, accuracies in TABLE_1.items()
        for (augment, output), acc in zip(COLUMNS, accuracies)
    ],
)
