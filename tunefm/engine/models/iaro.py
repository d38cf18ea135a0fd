"""IaroHasNoFashionNet1-4, the four CNNs of seed 000 (GSERM 2023, I. Kriuchkov).

The seed gives each net's parameter count and how many convolution, max-pool and
fully connected layers it has, but not the layer sizes. The sizes below are chosen
so that every count matches the seed exactly (5x5 kernels, no padding, ReLU, 2x2
max-pool, as in the example the seed's Net1 implies):

| model | layers (input 1x28x28)                                              | params    |
|-------|---------------------------------------------------------------------|-----------|
| iaro1 | conv 3@5x5 > pool > FC 48 > FC 10                                   |    21,352 |
| iaro2 | conv 6@5x5 > pool > FC 776 > FC 272 > FC 10                         |   885,470 |
| iaro3 | conv 8@5x5 > conv 30@5x5 > pool > FC 592 > FC 550 > FC 10           | 2,114,490 |
| iaro4 | conv 20@5x5 > pool > conv 64@5x5 > pool > FC 1088 > FC 1024 > FC 10 | 2,273,170 |
"""

from collections import OrderedDict

from torch import nn

from tunefm.engine.models.spec import ModelSpec


def _conv_stack(channels: list[int], pool_after: list[bool]) -> tuple[nn.Sequential, int, int]:
    """5x5 valid convolutions with ReLU, each optionally followed by a 2x2 max-pool.

    Returns the stack, its output channels and its output side length.
    """
    layers: list[nn.Module] = []
    in_channels, side = 1, 28
    for out_channels, pool in zip(channels, pool_after):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=5), nn.ReLU()]
        side -= 4
        if pool:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels, side


def _classifier(in_features: int, hidden: list[int]) -> nn.Sequential:
    """Fully connected layers with ReLU between them, ending in 10 logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, 10))
    return nn.Sequential(*layers)


class IaroNet(nn.Sequential):
    """Conv stack (`features`) then an MLP head (`classifier`); (N, 1, 28, 28) -> (N, 10) logits.
    A plain sequence of layers, so fused trial groups can stack it (`tunefm.engine.fused`)."""

    def __init__(self, channels: list[int], pool_after: list[bool], hidden: list[int]):
        features, out_channels, side = _conv_stack(channels, pool_after)
        super().__init__(OrderedDict(features=features, classifier=_classifier(out_channels * side * side, hidden)))


# name -> (conv channels, max-pool after each conv, FC hidden widths)
ARCHITECTURES = {
    "iaro1": ([3], [True], [48]),
    "iaro2": ([6], [True], [776, 272]),
    "iaro3": ([8, 30], [False, True], [592, 550]),
    "iaro4": ([20, 64], [True, True], [1088, 1024]),
}


GPU_FRACTIONS = {"iaro1": 0.25, "iaro2": 0.25, "iaro3": 0.5, "iaro4": 0.5}


def specs():
    for name, (channels, pool_after, hidden) in ARCHITECTURES.items():
        yield ModelSpec(
            name=name, family="IaroHasNoFashionNet", source="000_3b33fd455f65cb7c.txt",
            gpu_fraction=GPU_FRACTIONS[name],
            factory=lambda c=channels, p=pool_after, h=hidden: IaroNet(c, p, h),
            description=f"IaroHasNoFashionNet{name[-1]}: {len(channels)} conv, "
                        f"{sum(pool_after)} pool, {len(hidden) + 1} FC",
        )
