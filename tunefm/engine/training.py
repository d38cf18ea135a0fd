"""One model's training in plain PyTorch: the state (model, optimizer, RNG streams, the
learning-rate schedule), one epoch, evaluation, prediction and the checkpoint's bytes.

Data arrives as uint8 arrays; `to_tensors` moves a split to its device once as normalized
float tensors, and each epoch slices batches from a seeded random permutation: no
DataLoader, no PIL, no per-sample Python. The config picks the model and its options, the
weight init, the loss (`output`: softmax cross-entropy or sigmoid BCE), batch augmentation
(random crop and flip as one gather) and a per-step learning-rate decay. A checkpoint holds
model, optimizer, epoch and RNG states with every tensor on the CPU, so a restored trial
continues exactly where it stopped, on any node. The same seed and config give the same
curve on CPU.

`solo.fit` runs these epochs for one trial, `fused.FusedGroup` for several at once; how a
trial trains (device, loop, fusion) is decided in `training_plan`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tunefm.engine import loops, models

# Fashion-MNIST pixel statistics (training set, pixels / 255).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530
EVAL_BATCH_SIZE = 2048


def to_tensors(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) + uint8 (N,) -> normalized float (N, 1, 28, 28) + int64 (N,) on `device`."""
    x = torch.from_numpy(images.copy()).to(device)  # copy: object-store arrays are read-only
    x = x.unsqueeze(1).float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return x, y


def build_optimizer(config: dict, parameters) -> torch.optim.Optimizer:
    name = config.get("optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=config["lr"], momentum=config.get("momentum", 0.0),
                               weight_decay=config.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(parameters, lr=config["lr"], weight_decay=config.get("weight_decay", 0.0))
    raise ValueError(f"unknown optimizer {name!r}")  # the study validates this first


def build_scheduler(config: dict, optimizer: torch.optim.Optimizer):
    """Exponential decay per optimizer step (lr_k = lr * lr_decay**k), or None for a constant lr."""
    decay = float(config.get("lr_decay", 1.0))
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay) if decay < 1.0 else None


def softmax_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the logits (= NLL of a log-softmax output)."""
    return nn.functional.cross_entropy(logits, y, reduction=reduction)


def sigmoid_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of 10 independent sigmoids against one-hot targets, averaged over classes."""
    targets = nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)  # (B, 10)
    per_sample = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    if reduction == "none":
        return per_sample
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


LOSSES = {"softmax": softmax_loss, "sigmoid": sigmoid_loss}


def loss_function(config: dict):
    return LOSSES[config.get("output", "softmax")]


CROP_PAD = 2  # random crop: shift each image by up to 2 px (Fashion-MNIST items fill most of the frame)
BACKGROUND = (0.0 - PIXEL_MEAN) / PIXEL_STD  # a black pixel after normalization


def crop_indices(n: int, generator: torch.Generator, device: torch.device,
                 side: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop offset and horizontal flip for each of n images, as the (n, 28) row and
    column indices into the padded images. Drawn once per epoch from the trial's CPU
    generator (a seed fixes the augmentation) and moved to the device in one copy."""
    top = torch.randint(0, 2 * CROP_PAD + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * CROP_PAD + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = top + torch.arange(side)  # (n, 28)
    cols = left + torch.arange(side)  # (n, 28)
    cols = torch.where(flip, cols.flip(1), cols)  # a flipped image reads its columns right to left
    return rows.to(device), cols.to(device)


def augment_batch(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Random crop (pad by CROP_PAD with background, cut 28x28 back out) and horizontal flip
    of every image in (B, 1, 28, 28) by its `crop_indices`, as one gather: no per-image Python."""
    padded = nn.functional.pad(x, (CROP_PAD,) * 4, value=BACKGROUND)[:, 0]  # (B, 28+2p, 28+2p)
    batch = torch.arange(len(x), device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, 28, 28)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                batch_size: int, generator: torch.Generator, loss_fn=softmax_loss, augment: bool = False,
                scheduler=None) -> tuple[float, float]:
    """One pass over (x, y) in a random order; returns (mean loss, accuracy)."""
    model.train()
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device)
    if augment:
        rows, cols = crop_indices(n, generator, x.device)
    # Each step leaves its loss and predictions in preallocated buffers (one small op each,
    # no host sync); the epoch's sums are taken once at the end.
    steps = (n + batch_size - 1) // batch_size
    losses = torch.empty(steps, device=x.device)
    predicted = torch.empty(n, dtype=torch.int64, device=x.device)
    for step, start in enumerate(range(0, n, batch_size)):
        idx = order[start:start + batch_size]
        xb, yb = x[idx], y[idx]  # (B, 1, 28, 28), (B,)
        if augment:
            xb = augment_batch(xb, rows[start:start + batch_size], cols[start:start + batch_size])
        logits = model(xb)
        loss = loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses[step] = loss.detach()
        torch.argmax(logits.detach(), 1, out=predicted[start:start + batch_size])
    sizes = torch.full((steps,), float(batch_size), device=x.device)
    sizes[-1] = n - (steps - 1) * batch_size
    return (losses @ sizes).item() / n, (predicted == y[order]).sum().item() / n


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
            loss_fn=softmax_loss) -> tuple[float, torch.Tensor]:
    """(mean loss, predicted labels on x's device) over (x, y) in large batches, without gradients."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    predictions = []
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        loss_sum += loss_fn(logits, y[start:start + batch_size], reduction="sum")
        predictions.append(logits.argmax(1))
    return loss_sum.item() / len(y), torch.cat(predictions)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
             loss_fn=softmax_loss) -> tuple[float, float]:
    """(mean loss, accuracy) over (x, y)."""
    loss, predicted = predict(model, x, y, batch_size, loss_fn)
    return loss, (predicted == y).sum().item() / len(y)


class DrawnDropout(nn.Dropout):
    """nn.Dropout whose masks are drawn on the host from the trial's own generator and then
    moved to its device: the same masks on a CPU and on any GPU, alone or in a fused group
    (`fused.FusedGroup` draws each member's from the same generator, in the same order).
    nn.Dropout's own masks come from the device's global generator: on a GPU that is the
    CUDA one, which a group cannot share out per member."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(tuple(x.shape), self.p, self.generator).to(x.device, non_blocking=True)


def dropout_mask(shape: tuple, p: float, generator: torch.Generator) -> torch.Tensor:
    """A dropout mask on the CPU (`bernoulli_(1 - p) / (1 - p)`, F.dropout's arithmetic)."""
    return torch.empty(shape).bernoulli_(1 - p, generator=generator).div_(1 - p)


def draw_dropout_from(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every nn.Dropout of `model` replaced by a `DrawnDropout` on `generator` (in place)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, child_name, DrawnDropout(child.p, generator))
    return model


@dataclass
class TrainingState:
    """Everything needed to continue a trial bit-for-bit: saved in each checkpoint.

    A trial's randomness after its init is its own: `generator` draws the batch order and
    augmentation, `dropout_generator` the dropout masks, both CPU generators. Nothing reads
    the process's global or CUDA generators, so a checkpoint carries no process-wide state
    and restores the same on any device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # drives the batch order and augmentation
    scheduler: object = None  # lr decay per step, if any
    epoch: int = 0  # epochs completed
    loop: str = "plain"  # how the steps run (loops.py)
    dropout_generator: torch.Generator | None = None  # the dropout masks' stream (DrawnDropout)

    def state_dict(self) -> dict:
        state = {
            "loop": self.loop,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }
        if self.dropout_generator is not None:
            state["dropout_rng"] = self.dropout_generator.get_state()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint loaded anywhere (`load_checkpoint` puts every tensor on the CPU; the
        model's and optimizer's are copied to this state's device)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.generator.set_state(_cpu_rng(state["generator"]))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        # Checkpoints from before `dropout_rng` kept the dropout stream as torch's global RNG.
        dropout_rng = state.get("dropout_rng", state.get("torch_rng"))
        if self.dropout_generator is not None and dropout_rng is not None:
            self.dropout_generator.set_state(_cpu_rng(dropout_rng))


def _cpu_rng(state: torch.Tensor) -> torch.Tensor:
    """A generator state as `Generator.set_state` takes it: a CPU byte tensor."""
    return state.detach().to("cpu", torch.uint8)


def on_cpu(value):
    """`value` (a checkpoint: nested dicts, lists, tuples) with every tensor moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def checkpoint_bytes(state: dict) -> bytes:
    """A checkpoint's `state.pt` bytes, every tensor saved from the CPU: it loads on any node,
    with a GPU or without, whatever device index it was trained on."""
    buffer = io.BytesIO()
    torch.save(on_cpu(state), buffer)
    return buffer.getvalue()


def load_checkpoint(source: bytes | str | os.PathLike) -> dict:
    """A `state.pt` (bytes or a path) with every tensor on the CPU, wherever it was saved
    (also a checkpoint of an older tunefm that kept device tensors)."""
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    return torch.load(stream, map_location="cpu", weights_only=False)


def build_model(config: dict) -> nn.Module:
    """The trial's network from its config (the one place a config becomes a model):
    the model's own options from the config, then the `init` scheme."""
    spec = models.get(config["model"])
    model = spec.build({k: v for k, v in config.items() if k in spec.options})
    return models.init_weights(model, config.get("init", "default"))


def checkpoint_score(val_acc: float, epoch: int) -> float:
    """val_acc with ties broken towards the earlier epoch.

    Tune keeps the best checkpoint by this score and, on equal scores, the later one;
    the run's best epoch is the first at the best val_acc. Accuracies differ by at least
    1/60,000, far more than the 1e-9 per epoch used here.
    """
    return val_acc - epoch * 1e-9


def init_state(config: dict, device: torch.device, loop: str = "plain") -> TrainingState:
    """A fresh model and optimizer, seeded from config['seed'], laid out for `loop`."""
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    model = build_model(config)
    # The dropout stream continues torch's seeded stream after the init (where a CPU trial's
    # nn.Dropout would have drawn from), but as the trial's own generator, on every device.
    dropout_generator = torch.Generator()
    dropout_generator.set_state(torch.get_rng_state())
    model = loops.place_model(draw_dropout_from(model, dropout_generator), loop, device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = build_optimizer(config, model.parameters())
    return TrainingState(model, optimizer, generator, build_scheduler(config, optimizer), loop=loop,
                         dropout_generator=dropout_generator)


