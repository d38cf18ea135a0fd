"""CNN_1 to CNN_5 of seed 001 (`001_b3a5012d14491ce7.txt`, Advertima assignment).

The seed gives every layer: 3x3 (or 5x5, 1x1) convolutions with stride 1, ReLU, 2x2
max-pools, and the FC sizes. It does not give padding, but its FC input sizes pin it
down. CNN_1 needs a 5x5 map after its second pool (FC 3200 = 128 x 5 x 5) and CNN_5 a
2x2 map (FC 1024 = 256 x 2 x 2). Padding only the third 3x3 convolution (the one
before the first pool) gives both, and CNN_4's 512 = 128 x 2 x 2 with no padding at
all; no other single padding choice fits all three:

    CNN_1-3  28 -> 26 -> 24 -> 24 (pad 1) -> pool 12 -> 10 -> pool 5
    CNN_4    28 -> 24 -> pool 12 -> 8 -> pool 4 -> 4 (1x1) -> pool 2
    CNN_5    28 -> 26 -> 24 -> 24 (pad 1) -> pool 12 -> 8 -> 4 -> pool 2

| model | seed's description                                   | params    |
|-------|------------------------------------------------------|-----------|
| cnn1  | 4 conv, 2 pool, FC 3200-1024-512-10                  | 4,048,010 |
| cnn2  | cnn1 + batch norm after every conv (704 BN params)   | 4,048,714 |
| cnn3  | cnn2 + dropout (p = `dropout`, 0.5) on FC 1 and FC 2 | 4,048,714 |
| cnn4  | conv 5x5x32, 5x5x64, 1x1x128 (BN, pool each), FC 512-10 | 65,994 |
| cnn5  | 5 conv (3x3 32/64/128, 5x5 128/256) with BN, FC 1024-512-10 | 1,853,002 |

The convolutions alone of cnn1 have the seed's 240,256 parameters and its FC layers
the seed's 3,807,754.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from tunefm.engine.models.spec import ModelSpec, dropout_option

SOURCE = "001_b3a5012d14491ce7.txt"

# One conv layer: (out channels, kernel, padding, max-pool after it)
CONVS = {
    "cnn1": [(32, 3, 0, False), (64, 3, 0, False), (128, 3, 1, True), (128, 3, 0, True)],
    "cnn4": [(32, 5, 0, True), (64, 5, 0, True), (128, 1, 0, True)],
    "cnn5": [(32, 3, 0, False), (64, 3, 0, False), (128, 3, 1, True), (128, 5, 0, False), (256, 5, 0, True)],
}
CONVS["cnn2"] = CONVS["cnn3"] = CONVS["cnn1"]
HIDDEN = {"cnn1": [1024, 512], "cnn2": [1024, 512], "cnn3": [1024, 512], "cnn4": [], "cnn5": [512]}
BATCH_NORM = {"cnn1": False, "cnn2": True, "cnn3": True, "cnn4": True, "cnn5": True}
GPU_FRACTIONS = {"cnn1": 0.5, "cnn2": 0.5, "cnn3": 0.5, "cnn4": 0.25, "cnn5": 0.5}
DESCRIPTIONS = {
    "cnn1": "CNN_1: 4 conv (3x3 32/64/128/128), 2 pool, FC 3200-1024-512-10",
    "cnn2": "CNN_2: CNN_1 with batch norm after every conv",
    "cnn3": "CNN_3: CNN_2 with dropout on the two hidden FC layers",
    "cnn4": "CNN_4: conv 5x5x32, 5x5x64, 1x1x128 with BN and pool, FC 512-10",
    "cnn5": "CNN_5: 5 conv with BN (3x3 32/64/128, 5x5 128/256), FC 1024-512-10",
}


class SeedCNN(nn.Sequential):
    """Conv [-> BN] -> ReLU [-> pool] blocks (`features`), then FC layers with ReLU [and dropout]
    (`classifier`). A plain sequence of layers, so fused trial groups can stack it (`tunefm.engine.fused`)."""

    def __init__(self, convs: list[tuple[int, int, int, bool]], hidden: list[int], batch_norm: bool,
                 dropout: float = 0.0):
        layers: list[nn.Module] = []
        channels, side = 1, 28
        for out_channels, kernel, padding, pool in convs:
            layers.append(nn.Conv2d(channels, out_channels, kernel, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU())
            side = side - kernel + 1 + 2 * padding
            if pool:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            channels = out_channels
        head: list[nn.Module] = [nn.Flatten()]
        width = channels * side * side  # (N, C, side, side) flattened
        for out_width in hidden:
            head += [nn.Linear(width, out_width), nn.ReLU()]
            if dropout:
                head.append(nn.Dropout(dropout))
            width = out_width
        head.append(nn.Linear(width, 10))
        super().__init__(OrderedDict(features=nn.Sequential(*layers), classifier=nn.Sequential(*head)))


def specs():
    for name in ("cnn1", "cnn2", "cnn3", "cnn4", "cnn5"):
        takes_dropout = name == "cnn3"
        options = {"dropout": dropout_option(0.5, "on the two hidden FC layers")} if takes_dropout else {}

        def factory(name=name, **options):
            return SeedCNN(CONVS[name], HIDDEN[name], BATCH_NORM[name], options.get("dropout", 0.0))

        yield ModelSpec(name=name, family="Advertima CNN", source=SOURCE, gpu_fraction=GPU_FRACTIONS[name],
                        factory=factory, options=options, description=DESCRIPTIONS[name])
