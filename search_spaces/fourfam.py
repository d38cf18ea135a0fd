"""fourfam: seed 000 (`000_3b33fd455f65cb7c.txt`, IaroHasNoFashionNet, GSERM 2023).

Reproduces the seed's full factorial study: the four IaroHasNoFashionNet CNNs
(`iaro1`..`iaro4`) x learning rate {0.0005, 0.001, 0.005, 0.01} x mini-batch size
{8, 16, 32, 64, 128, 256, 512}, each trained for up to 100 epochs = 112 trials.

Choices where the seed is silent: plain SGD without momentum or weight decay (it
names no optimizer settings beyond the learning rate), cross-entropy loss.

Reported figures ("Summary of results"): per model the best evaluation accuracy and
its learning rate and batch size, the minimum training loss and its epoch (the seed
counts epochs from 0, so its "@ 99" is epoch 100 here), the evaluation loss at the
end of training, time per epoch (one V100) and the parameter count. The seed
evaluated on a held-out set each epoch, which is tunefm's validation split.

Quick look (2 CPU cores, about 3 minutes):
    tunefm search --space fourfam --max-epochs 3 --train-size 3000 --val-size 1000
"""

from tunefm.study import Reported, Study

SEED_RESULTS = {  # model: (best eval acc, lr, batch size, min train loss, eval loss, s/epoch, params)
    "iaro1": (0.8941, 0.01, 32, 0.175, 0.329, 11.38, 21_352),
    "iaro2": (0.9253, 0.005, 8, 0.00033, 0.538, 23.51, 885_470),
    "iaro3": (0.9220, 0.01, 8, 0.000021, 0.789, 26.12, 2_114_490),
    "iaro4": (0.9234, 0.01, 8, 0.000028, 0.718, 30.49, 2_273_170),
}

STUDY = Study(
    name="fourfam",
    description="IaroHasNoFashionNet1-4 x lr x batch size, SGD",
    grid={
        "model": ["iaro1", "iaro2", "iaro3", "iaro4"],
        "lr": [0.0005, 0.001, 0.005, 0.01],
        "batch_size": [8, 16, 32, 64, 128, 256, 512],
    },
    fixed={"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0},
    max_epochs=100,
    source="000_3b33fd455f65cb7c.txt",
    reported=[
        Reported(where={"model": model},
                 figures={"best_val_acc": acc, "min_train_loss": train_loss, "min_train_loss_epoch": 100,
                          "final_val_loss": val_loss, "time_per_epoch_s": seconds, "params": params},
                 chosen={"lr": lr, "batch_size": batch_size}, epochs=100)
        for model, (acc, lr, batch_size, train_loss, val_loss, seconds, params) in SEED_RESULTS.items()
    ],
)
