"""fourfam: seed 000 (`000_3b33fd455f65cb7c.txt`, IaroHasNoFashionNet, GSERM 2023).

Reproduces the seed's full factorial study: the four IaroHasNoFashionNet CNNs
(`iaro1`..`iaro4`) x learning rate {0.0005, 0.001, 0.005, 0.01} x mini-batch size
{8, 16, 32, 64, 128, 256, 512}, each trained for up to 100 epochs = 112 trials.

The seed names no optimizer settings beyond the learning rate, so plain SGD without
momentum or weight decay is used, with cross-entropy loss.

Quick look (2 CPU cores, about 10 minutes):
    tunefm search --space fourfam --max-epochs 3 --train-size 3000 --val-size 1000
"""

from tunefm.study import Study

STUDY = Study(
    name="fourfam",
    description="IaroHasNoFashionNet1-4 x lr x batch size, SGD, 100 epochs (seed 000)",
    grid={
        "model": ["iaro1", "iaro2", "iaro3", "iaro4"],
        "lr": [0.0005, 0.001, 0.005, 0.01],
        "batch_size": [8, 16, 32, 64, 128, 256, 512],
    },
    fixed={"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0},
    max_epochs=100,
    source="000_3b33fd455f65cb7c.txt",
)
