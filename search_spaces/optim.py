"""optim: seed 004 (`004_0a8adefb90470ef6.txt`, MLflow study), experiment 2.

The model the seed chose after experiment 1 for its training time (`twoconv` with
3x3x8, 3x3x8, 100 units), over weight init {Xavier uniform, Xavier normal, Kaiming
uniform} x batch size {8, 16, 32, 64} x (lr, momentum) in {0.001, 0.01} x {0.9, 0.5}
(the seed's four pairs are exactly that product): 3 x 4 x 4 = 48 trials of SGD with
momentum and zero biases.

Choices where the seed is silent: 10 epochs, as in `kernels`. Every trial is
evaluated on the test set (`test_top` = 48), as the seed ranks all of them by test
accuracy and by the time to reach 90% train accuracy.

Reported: the seed's top 3 by test accuracy and top 3 by training time (Tables 2.2.a
and 2.2.b; one configuration is in both).
"""

from tunefm.study import Reported, Study

# (batch size, init, lr, momentum): (test acc, seconds to 90% train acc, table)
SEED_TOP = {
    (32, "xavier_uniform", 0.01, 0.9): (0.8957, 127, "top 3 by test acc"),
    (8, "kaiming_uniform", 0.01, 0.9): (0.8948, 81, "top 3 by test acc and by time"),
    (8, "xavier_uniform", 0.01, 0.9): (0.8937, 111, "top 3 by test acc"),
    (16, "kaiming_uniform", 0.01, 0.9): (0.8838, 70, "top 3 by time"),
    (64, "kaiming_uniform", 0.01, 0.9): (0.8901, 96, "top 3 by time"),
}

STUDY = Study(
    name="optim",
    description="two-conv CNN 3x3x8/3x3x8/100: init x batch size x lr x momentum",
    grid={
        "init": ["xavier_uniform", "xavier_normal", "kaiming_uniform"],
        "batch_size": [8, 16, 32, 64],
        "lr": [0.001, 0.01],
        "momentum": [0.9, 0.5],
    },
    fixed={"model": "twoconv", "conv1_kernel": 3, "conv1_filters": 8, "conv2_kernel": 3, "conv2_filters": 8,
           "dense": 100, "optimizer": "sgd"},
    max_epochs=10,
    source="004_0a8adefb90470ef6.txt",
    test_top=48,
    reported=[
        Reported(where={"batch_size": batch_size, "init": init, "lr": lr, "momentum": momentum},
                 figures={"test_acc": acc, "time_to_90_train_acc_s": seconds}, note=table)
        for (batch_size, init, lr, momentum), (acc, seconds, table) in SEED_TOP.items()
    ],
)
