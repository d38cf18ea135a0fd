"""The Ray Tune function trainable: one trial = one model trained for up to N epochs.

Data arrives once through the object store (`tune.with_parameters`) as uint8 arrays;
the trial moves each split to its device once as normalized float tensors, and each
epoch slices batches from a seeded random permutation: no DataLoader, no PIL, no
per-sample Python. The config picks the model and its options, the weight init, the
loss (`output`: softmax cross-entropy or sigmoid BCE), batch augmentation (random crop
and flip as one gather) and a per-step learning-rate decay. After every epoch it reports

    epoch, train_loss, train_acc, val_loss, val_acc, epoch_time_s

(plus constant trial facts: params, device, node_id, node_ip, gpu_fraction, gpu_ids, threads,
started_at) together with a
checkpoint of model, optimizer, epoch and RNG states, so a restored trial continues
exactly where it stopped. Tune keeps each trial's best-validation checkpoint (by
`checkpoint_score`) and its latest; the test-set evaluation loads the best one.
The same seed and config give the same curve on CPU.

How the steps run (`loops.py`: default or channels-last layout, oneDNN or PyTorch's own
convolution on CPU; eager or a captured CUDA graph on a GPU) is chosen per shape by measuring
the candidates on the machine (`calibrate.py`, `--loop auto`), or pinned (`--loop plain`) for
the same bits on every run. A trial keeps its loop in its checkpoint, so a resumed trial
continues with the kernels it started with.

The pieces (`to_tensors`, `train_epoch`, `predict`, `evaluate`, `fit`) are plain PyTorch and are
used directly by the tests and the benchmarks; only `tune_trainable` needs Ray.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from tunefm import columns, devices, interrupt, loops, models

# Fashion-MNIST pixel statistics (training set, pixels / 255).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530
EVAL_BATCH_SIZE = 2048
CHECKPOINT_FILE, CHECKPOINT_META = "state.pt", "meta.json"


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


def resolve_loop(loop: str, config: dict, device: torch.device, steps: int | None = None) -> str:
    """`auto`: the loop calibration measured fastest for this shape here (`plain` for a trial of
    too few `steps` to repay measuring); a fixed loop as it applies on `device` and config."""
    if loop == loops.AUTO:
        from tunefm import calibrate

        return runnable_loop(calibrate.choose_loop(config, device, torch.get_num_threads(), steps), config)
    return runnable_loop(loops.for_device(loop, device), config)


def runnable_loop(loop: str, config: dict) -> str:
    """The loop a trial of `config` really runs: a captured step cannot draw each step's dropout
    masks on the host, so a model that drops anything runs `captured` as `plain` (and says so)."""
    return "plain" if loop == "captured" and draws_dropout(config) else loop


def draws_dropout(config: dict) -> bool:
    """Whether config's model has a dropout layer with p > 0 (built once per model and options)."""
    spec = models.get(config["model"])
    key = (config["model"], tuple(sorted((k, repr(v)) for k, v in config.items() if k in spec.options)))
    if key not in _DROPOUT:
        with torch.random.fork_rng(devices=[]):  # building the model draws its init
            model = build_model(config)
        _DROPOUT[key] = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    return _DROPOUT[key]


_DROPOUT: dict[tuple, bool] = {}


def training_steps(config: dict, train_images: int, max_epochs: int, from_epoch: int = 0) -> int:
    """The optimizer steps a trial has ahead of it."""
    per_epoch = -(-train_images // int(config["batch_size"]))
    return per_epoch * max(0, columns.epoch_limit(config, max_epochs) - from_epoch)


class GroupMember:
    """A trial trained as the only member of a `fused.FusedGroup` (the captured loop): what
    `fit` yields in place of a TrainingState."""

    def __init__(self, group, loop: str):
        self.group, self.loop = group, loop

    @property
    def epoch(self) -> int:
        return self.group.epoch(0)

    def state_dict(self) -> dict:
        return {**self.group.state_dict(0), "loop": self.loop}


def fit(config: dict, arrays: dict[str, np.ndarray], max_epochs: int, device: torch.device,
        state: TrainingState | None = None, loop: str = "plain") -> Iterator[tuple[dict, TrainingState]]:
    """Train from `state` (or from scratch, with `loop`) to `max_epochs` (or the config's own
    `max_epochs`, if fewer); yield (metrics, state) per epoch. A given state keeps its own loop."""
    steps = training_steps(config, len(arrays["train_y"]), max_epochs)
    state = state or init_state(config, device, resolve_loop(loop, config, device, steps))
    train_x, train_y = to_tensors(arrays["train_x"], arrays["train_y"], device)
    val_x, val_y = to_tensors(arrays["val_x"], arrays["val_y"], device)
    max_epochs = columns.epoch_limit(config, max_epochs)
    if state.loop == "captured":
        yield from _fit_captured(config, state, train_x, train_y, val_x, val_y, max_epochs, device)
        return
    batch_size = int(config["batch_size"])
    loss_fn, augment = loss_function(config), bool(config.get("augment", False))
    while state.epoch < max_epochs:
        started = time.perf_counter()
        with loops.kernels(state.loop):
            train_loss, train_acc = train_epoch(state.model, state.optimizer, train_x, train_y, batch_size,
                                                state.generator, loss_fn, augment, state.scheduler)
        trained = time.perf_counter()
        val_loss, val_acc = evaluate(state.model, val_x, val_y, loss_fn=loss_fn)
        state.epoch += 1
        yield epoch_metrics(state.epoch, train_loss, train_acc, val_loss, val_acc, started, trained), state


def epoch_metrics(epoch: int, train_loss: float, train_acc: float, val_loss: float, val_acc: float,
                  started: float, trained: float) -> dict:
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "epoch_time_s": time.perf_counter() - started, "train_time_s": trained - started}


def _fit_captured(config, state, train_x, train_y, val_x, val_y, max_epochs, device):
    """`fit` for the captured loop: the trial as a fused group of one with its step as a CUDA graph."""
    from tunefm import fused

    group = fused.FusedGroup(device, capture=True)
    group.add(config, state.state_dict())
    member = GroupMember(group, state.loop)
    while member.epoch < max_epochs:
        started = time.perf_counter()
        [(train_loss, train_acc)] = group.train_epoch(train_x, train_y)
        trained = time.perf_counter()
        [(val_loss, val_acc)] = group.evaluate(val_x, val_y)
        metrics = epoch_metrics(member.epoch, train_loss, train_acc, val_loss, val_acc, started, trained)
        yield {**metrics, "execution": group.ran}, member  # an epoch too short to capture ran eagerly


def pick_device(gpu_ids: list) -> torch.device:
    """CUDA when Ray gave the trial a GPU and CUDA exists, else CPU.

    A GPU id with no CUDA device behind it (logical GPUs, a driver problem) falls back
    to CPU; the trial reports `gpu_ids` and `device`, and the search warns once per node.
    """
    return torch.device("cuda") if gpu_ids and devices.cuda_available() else torch.device("cpu")


def checkpoint_loop(state: dict) -> str:
    """The loop a checkpoint's trial trained with (checkpoints from before loops: plain)."""
    return state.get("loop", "plain")


def tune_trainable(config: dict, arrays: dict[str, np.ndarray], max_epochs: int, loop: str = loops.AUTO) -> None:
    """Ray Tune entry point; wrap with `tune.with_parameters(arrays=..., max_epochs=..., loop=...)`."""
    import ray
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    interrupt.quiet_exit_during_garbage_collection()
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    device = pick_device(gpu_ids)
    if loop != loops.AUTO:  # pinned: the same bits every run, on CUDA too
        devices.make_deterministic(device)

    checkpoint, saved = tune.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = load_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
    steps = training_steps(config, len(arrays["train_y"]), max_epochs)
    state = init_state(config, device, runnable_loop(checkpoint_loop(saved), config) if saved
                       else resolve_loop(loop, config, device, steps))
    if saved:
        state.load_state_dict(saved)

    trial_facts = {
        "params": models.count_params(state.model),
        "device": device.type,
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "gpu_fraction": float(resources.get("GPU", 0.0)),
        "gpu_ids": ",".join(gpu_ids),  # "" without a GPU; trials sharing a GPU share its id
        "threads": torch.get_num_threads(),
        "execution": state.loop,
        "fused_group": "",
        "group_size": 1,
        "started_at": time.time(),
    }
    for metrics, state in fit(config, arrays, max_epochs, device, state):
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, CHECKPOINT_FILE), "wb") as f:
                f.write(checkpoint_bytes(state.state_dict()))
            with open(os.path.join(folder, CHECKPOINT_META), "w") as f:  # lets evaluation find an epoch cheaply
                json.dump({"epoch": metrics["epoch"], "val_acc": metrics["val_acc"]}, f)
            score = checkpoint_score(metrics["val_acc"], metrics["epoch"])
            ran = {"execution": metrics.pop("execution", state.loop)}
            tune.report({**metrics, **trial_facts, **ran, "checkpoint_score": score},
                        checkpoint=tune.Checkpoint.from_directory(folder))
