"""The baseline / better CNN of seed 003 (`003_9a4ff8a9bad5292c.txt`, K. Kahn, 2022).

The seed shows its architecture only as a picture. Its text says the better model adds
"dropout regularization on two fully connected layers (but not on last layer)", so the
head has three FC layers, and it cites the PyTorch-Ignite Fashion-MNIST notebook as its
starting point: two 5x5 convolutions with 16 and 32 filters, each max-pooled, giving a
32x4x4 map. So:

    conv 5x5x16 > ReLU > pool > conv 5x5x32 > ReLU > pool > FC 512-128 > ReLU [> dropout]
    > FC 128-64 > ReLU [> dropout] > FC 64-10                       87,818 parameters

`dropout` is 0 for the baseline and 0.5 for the better model. The seed's "negative log
likelihood" loss on a log-softmax output is exactly cross-entropy on the logits, which
is what tunefm's `output=softmax` trains with.
"""

from __future__ import annotations

from torch import nn

from tunefm.engine.models.spec import ModelSpec, dropout_option

SOURCE = "003_9a4ff8a9bad5292c.txt"


def kahn_cnn(dropout: float = 0.0) -> nn.Module:
    def hidden(in_width: int, out_width: int) -> list[nn.Module]:
        return [nn.Linear(in_width, out_width), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])

    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),   # (N, 16, 12, 12)
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, 4, 4)
        nn.Flatten(),
        *hidden(32 * 4 * 4, 128), *hidden(128, 64),
        nn.Linear(64, 10),
    )


def specs():
    yield ModelSpec("kahn", "Kahn baseline/better CNN", SOURCE, 0.25, kahn_cnn,
                    options={"dropout": dropout_option(0.0, "on the two hidden FC layers")},
                    description="2 conv 5x5 (16, 32) + pool, FC 512-128-64-10")
