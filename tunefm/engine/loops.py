"""The ways a trial's training steps can run on its device: the candidates calibration chooses from.

    loops.check("channels_last", torch.device("cpu"))
    model = loops.place_model(model, "channels_last", device)
    with loops.kernels("native_conv"):
        training.train_epoch(...)

CPU:
  - plain:         PyTorch's defaults (default layout, oneDNN's kernels): a plain PyTorch loop;
  - channels_last: the parameters in channels-last layout, in which oneDNN picks its
                   channels-last convolutions (a 1-channel image is the same bytes either way);
  - native_conv:   oneDNN off for the training steps: PyTorch's own convolution, whose lower
                   per-call cost wins on tiny convolutions.
CUDA:
  - plain:         eager PyTorch;
  - captured:      forward, backward and optimizer step captured as one CUDA graph
                   (`fused.FusedGroup` with one member, `capture=True`).

Which is fastest depends on the machine (one layout measured 0.8x the default on a machine
of the same kind as the one where it was 1.4x), so `calibrate.py` measures them where the
trial runs, and `training_plan.py` asks it (`auto`) or applies a pinned loop. Every loop
gives the same curve up to float rounding; a fixed loop gives the same bits on every run.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tunefm.engine import choices
from tunefm.engine.choices import AUTO

CANDIDATES = choices.LOOP_CANDIDATES


def check(loop: str, device: torch.device | None = None) -> str:
    """`loop` if it is one, and one the device runs; else a UserError naming the valid ones."""
    return choices.check_loop(loop, None if device is None else device.type)


def for_device(loop: str, device: torch.device) -> str:
    """A fixed loop as it applies on `device`: a CPU-only choice is plain on a GPU and vice versa,
    so one `--loop` serves a cluster of both."""
    return loop if loop == AUTO or loop in CANDIDATES.get(device.type, ()) else "plain"


def place_model(model: nn.Module, loop: str, device: torch.device) -> nn.Module:
    """Move the model to `device` in the loop's layout."""
    if device.type == "cpu" and loop == "channels_last":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


@contextlib.contextmanager
def onednn(enabled: bool):
    """oneDNN on or off inside the block; the flag is process-wide, so it is restored on exit."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def kernels(loop: str):
    """Context for the training steps: oneDNN off for native_conv (evaluation's large batches keep it)."""
    return onednn(loop != "native_conv")
