"""cnn2-tpe: seed 001 (`001_b3a5012d14491ce7.txt`), its search for CNN_2 with augmentation.

The seed tunes CNN_2 (softmax output, augmented data, Adam) over the initial learning
rate, the L2 strength and the batch size, and reports lr 0.0003593, L2 0.0003593,
batch size 64 and 10 epochs, with 92.91% test accuracy. Its search script is not
shown, so the ranges are ours: lr and L2 log-uniform over [1e-5, 1e-2] (the seed's
fixed lr 0.004 and L2 0.001 lie inside), batch size one of 32, 64, 128, 256.

Hyperopt's TPE draws 30 configurations, 4 at a time; the first is the seed's choice,
so the run always contains it, and the first 10 are random before TPE models the
results. ASHA stops weak ones early, as in every tunefm study.
"""

from ray import tune

from tunefm.study import Reported, Study

SEED_CHOICE = {"lr": 0.0003593, "weight_decay": 0.0003593, "batch_size": 64}

STUDY = Study(
    name="cnn2-tpe",
    description="hyperopt TPE over lr, L2, batch size: CNN_2 with augmentation",
    searcher="hyperopt",
    space={
        "lr": tune.loguniform(1e-5, 1e-2),
        "weight_decay": tune.loguniform(1e-5, 1e-2),
        "batch_size": tune.choice([32, 64, 128, 256]),
    },
    fixed={"model": "cnn2", "augment": True, "output": "softmax", "optimizer": "adam"},
    num_samples=30,
    points_to_evaluate=[SEED_CHOICE],
    concurrency=4,
    max_epochs=10,
    source="001_b3a5012d14491ce7.txt",
    reported=[Reported(where={"model": "cnn2"}, figures={"test_acc": 0.9291}, chosen=SEED_CHOICE, epochs=10)],
)
