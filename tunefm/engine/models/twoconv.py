"""The two-convolution CNN of seed 004 (`004_0a8adefb90470ef6.txt`, Sooryakiran, MLflow study).

    conv k1 x k1 x f1 > ReLU > conv k2 x k2 x f2 > ReLU > FC `dense` > ReLU > FC 10

with stride 1, no padding and no pooling, as the seed's layer table lists none. The
options are the five keys its experiment 1 searches: `conv1_kernel`, `conv1_filters`,
`conv2_kernel`, `conv2_filters` and `dense`. The defaults are the seed's step-1 net
(3x3x16, 3x3x16, 100: 925,190 parameters); experiment 2 uses 3x3x8, 3x3x8, 100
(462,574). The seed's Xavier-uniform weights and zero biases come from the shared
`init` config key.
"""

from __future__ import annotations

from torch import nn

from tunefm.engine.models.spec import ModelSpec, int_option

SOURCE = "004_0a8adefb90470ef6.txt"


def two_conv(conv1_kernel: int = 3, conv1_filters: int = 16, conv2_kernel: int = 3, conv2_filters: int = 16,
             dense: int = 100) -> nn.Module:
    side = 28 - (conv1_kernel - 1) - (conv2_kernel - 1)  # valid convolutions
    return nn.Sequential(
        nn.Conv2d(1, conv1_filters, conv1_kernel), nn.ReLU(),
        nn.Conv2d(conv1_filters, conv2_filters, conv2_kernel), nn.ReLU(),  # (N, f2, side, side)
        nn.Flatten(),
        nn.Linear(conv2_filters * side * side, dense), nn.ReLU(),
        nn.Linear(dense, 10),
    )


def leaves_an_image(options) -> str | None:
    """Two valid convolutions shrink 28 px by k1 - 1 + k2 - 1: at least 1 px must remain."""
    k1, k2 = options["conv1_kernel"], options["conv2_kernel"]
    if k1 + k2 > 29:
        return f"conv1_kernel + conv2_kernel must be <= 29 (two unpadded convolutions of a 28x28 image), got {k1} + {k2} = {k1 + k2}"
    return None


def specs():
    yield ModelSpec(
        "twoconv", "Two-conv CNN", SOURCE, 0.25, two_conv,
        options={
            "conv1_kernel": int_option(3, 1, "first conv kernel size", odd=True),
            "conv1_filters": int_option(16, 1, "first conv filters"),
            "conv2_kernel": int_option(3, 1, "second conv kernel size", odd=True),
            "conv2_filters": int_option(16, 1, "second conv filters"),
            "dense": int_option(100, 1, "dense layer units"),
        },
        description="conv k1xk1xf1 > conv k2xk2xf2 > FC dense > FC 10, no pooling",
        combination=leaves_an_image,
    )
