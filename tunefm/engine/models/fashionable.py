"""The model ladder of seed 002 (`002_8766e111042e3d78.txt`, "Fashionable Learning").

The seed (a TensorFlow course project) compares logistic regression, fully connected
nets with 1-3 hidden layers ("ANN"), CNNs with 1-3 conv layers and VGG16, and tries
dropout, batch norm and learning-rate decay on them. It shows no layer sizes, so:

| model    | layers (input 1x28x28)                                                   | params     |
|----------|--------------------------------------------------------------------------|------------|
| logreg   | FC 784-10                                                                |      7,850 |
| ann1..3  | 1-3 hidden FC layers of `hidden` (256) units, ReLU, then FC 10           | 203,530-335,114 |
| convnet1 | conv 5x5x32 'same' > pool > FC 1024 > FC 10                              |  6,434,634 |
| convnet2 | + conv 5x5x64 'same' > pool                                              |  3,274,634 |
| convnet3 | + conv 5x5x128 'same' > pool                                             |  1,447,946 |
| vgg16    | VGG16's 13 conv layers (64..512, 5 pools), FC 512-512-10                 | 15,243,978 |

The convnets follow TensorFlow's classic "Deep MNIST" layout (5x5 'same' convolutions,
32 then 64 filters, a 1024-unit FC layer with dropout before the output), which is
where a 2018 TensorFlow project would start; the third layer doubles to 128.

VGG16 is adapted to 28x28 grayscale in three ways: the first convolution takes one
channel; the image is padded to 32x32 by repeating its border (background), so the
five 2x2 pools end at 1x1 instead of below it; and the classifier is 512-512-10
instead of 4096-4096-1000 (the usual VGG-for-CIFAR head: on a 1x1x512 map, 4096 units
would add 19M parameters and nothing else).

Options: `dropout` (ann, convnet, vgg16: before each hidden FC layer's output),
`batch_norm` (convnet, vgg16: after every convolution), `hidden` (ann: units per layer).
"""

from __future__ import annotations

from torch import nn

from tunefm.engine.models.spec import ModelSpec, batch_norm_option, dropout_option, int_option

SOURCE = "002_8766e111042e3d78.txt"
VGG16_CONVS = [64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512, "pool"]
CONVNET_CHANNELS = [32, 64, 128]


def _head(width: int, hidden: list[int], dropout: float) -> list[nn.Module]:
    """FC layers with ReLU (and dropout) after each hidden one, ending in 10 logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for out_width in hidden:
        layers += [nn.Linear(width, out_width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = out_width
    return layers + [nn.Linear(width, 10)]


def logreg() -> nn.Module:
    return nn.Sequential(*_head(28 * 28, [], 0.0))


def ann(layers: int, hidden: int, dropout: float) -> nn.Module:
    return nn.Sequential(*_head(28 * 28, [hidden] * layers, dropout))


def _conv(in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return layers + [nn.ReLU()]


def convnet(depth: int, batch_norm: bool, dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    channels, side = 1, 28
    for out_channels in CONVNET_CHANNELS[:depth]:
        layers += _conv(channels, out_channels, 5, batch_norm) + [nn.MaxPool2d(2)]
        channels, side = out_channels, side // 2  # 28 -> 14 -> 7 -> 3
    return nn.Sequential(*layers, *_head(channels * side * side, [1024], dropout))


def vgg16(batch_norm: bool, dropout: float) -> nn.Module:
    layers: list[nn.Module] = [nn.ReplicationPad2d(2)]  # (N, 1, 28, 28) -> (N, 1, 32, 32)
    channels = 1
    for item in VGG16_CONVS:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += _conv(channels, item, 3, batch_norm)
            channels = item
    return nn.Sequential(*layers, *_head(512, [512, 512], dropout))  # after 5 pools: (N, 512, 1, 1)


def specs():
    family = "Fashionable Learning ladder"
    yield ModelSpec("logreg", family, SOURCE, 0.25, logreg, description="logistic regression: FC 784-10")
    for depth in (1, 2, 3):
        yield ModelSpec(
            f"ann{depth}", family, SOURCE, 0.25,
            lambda depth=depth, **options: ann(depth, **options),
            options={"hidden": int_option(256, 1, "units per hidden layer"),
                     "dropout": dropout_option(0.0, "after every hidden layer")},
            description=f"ANN: {depth} hidden FC layer{'s' if depth > 1 else ''}, ReLU",
        )
    for depth in (1, 2, 3):
        yield ModelSpec(
            f"convnet{depth}", family, SOURCE, 0.5,
            lambda depth=depth, **options: convnet(depth, **options),
            options={"batch_norm": batch_norm_option(False), "dropout": dropout_option(0.0, "on the FC 1024 layer")},
            description=f"CNN: {depth} conv 5x5 'same' + pool layer{'s' if depth > 1 else ''}, FC 1024-10",
        )
    yield ModelSpec(
        "vgg16", family, SOURCE, 1.0, vgg16,
        options={"batch_norm": batch_norm_option(False), "dropout": dropout_option(0.5, "on the hidden FC layers")},
        description="VGG16 for 1x28x28: padded to 32x32, 13 conv, FC 512-512-10",
    )
