"""One trial trained alone: `fit` yields (metrics, state) after every epoch.

    for metrics, state in solo.fit(config, arrays, max_epochs=10, device=torch.device("cpu")):
        print(metrics["epoch"], metrics["val_acc"])

A fresh trial takes the loop `training_plan.solo_loop` decides; a restored state keeps its
own. The captured loop (a CUDA graph of the whole step) runs as a fused group of one.
Plain PyTorch: the Ray trial (`tune/trial.py`), the tests and the benchmarks call it alike.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from tunefm.engine import fused, loops, training_plan, trial_config
from tunefm.engine.training import TrainingState, evaluate, init_state, loss_function, to_tensors, train_epoch


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
    steps = training_plan.training_steps(config, len(arrays["train_y"]), max_epochs)
    state = state or init_state(config, device, training_plan.solo_loop(loop, config, device, steps))
    train_x, train_y = to_tensors(arrays["train_x"], arrays["train_y"], device)
    val_x, val_y = to_tensors(arrays["val_x"], arrays["val_y"], device)
    max_epochs = trial_config.epoch_limit(config, max_epochs)
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
