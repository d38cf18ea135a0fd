"""kernels: seed 004 (`004_0a8adefb90470ef6.txt`, MLflow study), experiment 1.

The two-conv CNN (`twoconv`) over its architecture: conv 1 and conv 2 kernel sizes
{3, 5}, their filter counts {8, 16, 32} and the dense layer {64, 100} units:
2 x 2 x 3 x 3 x 2 = 72 trials, trained as in the seed's step 1: Xavier-uniform
weights, zero biases, SGD with momentum 0.9 at lr 0.001, batch size 32.

Choices where the seed is silent: 10 epochs (it trained until about 90% train
accuracy, which takes 5-10 epochs at these settings). The seed ranks trials by test
accuracy and by the time to reach 90% train accuracy (`time_to_90_train_acc_s`,
measured here at epoch ends), so every trial is evaluated on the test set
(`test_top` = 72) and `tunefm summarize --cost time_to_90_train_acc_s` gives its
Pareto front. tunefm picks by validation accuracy; the seed's 60,000 training images
are 50,000 train + 10,000 validation here.

Reported: the seed's top 3 by test accuracy and top 3 by training time (Tables 2.1.a
and 2.1.b; one CPU-only Colab instance, so times are not comparable in scale).
"""

from tunefm.study import Reported, Study

# (conv1 kernel, conv1 filters, conv2 kernel, conv2 filters, dense): (test acc, seconds to 90% train acc, table)
SEED_TOP = {
    (5, 16, 5, 32, 100): (0.8914, 570.81, "top 3 by test acc"),
    (5, 16, 5, 32, 64): (0.8889, 606.53, "top 3 by test acc"),
    (3, 8, 3, 8, 64): (0.8887, 351.85, "top 3 by test acc"),
    (3, 8, 3, 8, 100): (0.8857, 305.47, "top 3 by time; chosen for optim"),
    (5, 8, 3, 8, 64): (0.8798, 331.32, "top 3 by time"),
    (3, 8, 5, 8, 100): (0.8772, 349.51, "top 3 by time"),
}
KEYS = ("conv1_kernel", "conv1_filters", "conv2_kernel", "conv2_filters", "dense")

STUDY = Study(
    name="kernels",
    description="two-conv CNN: kernel sizes x filters x dense units, SGD momentum",
    grid={
        "conv1_kernel": [3, 5],
        "conv2_kernel": [3, 5],
        "conv1_filters": [8, 16, 32],
        "conv2_filters": [8, 16, 32],
        "dense": [64, 100],
    },
    fixed={"model": "twoconv", "init": "xavier_uniform", "optimizer": "sgd", "lr": 0.001, "momentum": 0.9,
           "batch_size": 32},
    max_epochs=10,
    source="004_0a8adefb90470ef6.txt",
    test_top=72,
    reported=[
        Reported(where=dict(zip(KEYS, architecture)), figures={"test_acc": acc, "time_to_90_train_acc_s": seconds},
                 note=table)
        for architecture, (acc, seconds, table) in SEED_TOP.items()
    ],
)
