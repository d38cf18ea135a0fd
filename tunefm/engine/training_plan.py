"""How a trial trains, decided in one place: its device, its loop, and whether it trains in
a fused group (of what size, with which kernels).

    plan = training_plan.plan_trial(config, device, loop="auto", steps=7_000)        # alone
    plan = training_plan.plan_trial(config, device, "auto", steps, fuse="auto", capacity=8)
    plan.group      # None: alone, in plan.loop; else a calibrate.FusionPlan
    training_plan.evaluation_loop(config, device)                                    # test set

The solo trial (`tune/trial.py`), the fused executor (`tune/executor.py`), `solo.fit` and the
test-set evaluation (`tune/evaluate.py`) all ask here. `--loop auto` and `--fuse auto` are
answered from this machine's calibration (`calibrate.py`): measured once per shape, then
cached; a pinned loop is the same on every run. A restored trial keeps the loop in its
checkpoint, so it continues with the kernels it started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from tunefm.engine import calibrate, devices, loops, models, training, trial_config


@dataclass(frozen=True)
class TrainingPlan:
    """How one trial trains: alone in `loop` (group None), or in a fused group as `group` says."""

    loop: str
    group: calibrate.FusionPlan | None = None


def trial_device(gpu_ids: list) -> torch.device:
    """CUDA when Ray gave the trial a GPU and CUDA exists, else CPU.

    A GPU id with no CUDA device behind it (logical GPUs, a driver problem) falls back
    to CPU; the trial reports `gpu_ids` and `device`, and the search warns once per node.
    """
    return torch.device("cuda") if gpu_ids and devices.cuda_available() else torch.device("cpu")


def training_steps(config: dict, train_images: int, max_epochs: int, from_epoch: int = 0) -> int:
    """The optimizer steps a trial has ahead of it."""
    per_epoch = -(-train_images // int(config["batch_size"]))
    return per_epoch * max(0, trial_config.epoch_limit(config, max_epochs) - from_epoch)


def plan_trial(config: dict, device: torch.device, loop: str, steps: int | None, saved: dict | None = None,
               fuse: str = "off", threads: int | None = None, capacity: int = 1) -> TrainingPlan:
    """How a trial of `config` trains on `device`: `loop` and `fuse` are the search's settings,
    `steps` the training steps it has ahead, `saved` its checkpoint's state (a restored trial),
    `capacity` the members a fused group may hold here."""
    group = group_plan(config, device, loop, fuse, steps, threads or torch.get_num_threads(), capacity)
    if group is not None:
        return TrainingPlan(group.variant, group)
    return TrainingPlan(restored_loop(saved, config) if saved else solo_loop(loop, config, device, steps))


def solo_loop(loop: str, config: dict, device: torch.device, steps: int | None = None) -> str:
    """`auto`: the loop calibration measured fastest for this shape here (`plain` for a trial of
    too few `steps` to repay measuring); a fixed loop as it applies on `device` and config."""
    if loop == loops.AUTO:
        return runnable_loop(calibrate.choose_loop(config, device, torch.get_num_threads(), steps), config)
    return runnable_loop(loops.for_device(loop, device), config)


def restored_loop(saved: dict, config: dict) -> str:
    """The loop a checkpoint's trial trained with (checkpoints from before loops: plain)."""
    return runnable_loop(saved.get("loop", "plain"), config)


def group_plan(config: dict, device: torch.device, loop: str, fuse: str, steps: int | None, threads: int,
               capacity: int) -> calibrate.FusionPlan | None:
    """How trials of config's shape train together here: None alone, else in groups of a size
    and kernels. `steps`: one member's training steps."""
    if fuse == "off":
        return None
    pinned = loop != loops.AUTO
    if pinned or not calibrate.worth_measuring(None if steps is None else steps * capacity):
        # A pinned loop, or trials too short to repay measuring: uncalibrated groups (captured
        # on CUDA where the loop allows it), except for auto on CPU, where fusing must be measured to pay.
        if fuse == "auto" and not pinned and device.type == "cpu":
            return None
        variant = "captured" if device.type == "cuda" and loop in (loops.AUTO, "captured") else "plain"
        return calibrate.FusionPlan(capacity, runnable_loop(variant, config), 0.0, 0.0)
    plan = calibrate.fusion_plan(config, device, threads, largest=capacity)
    plan = dataclasses.replace(plan, variant=runnable_loop(plan.variant, config))
    if plan.group_size > 1:
        return plan
    if fuse == "on":  # fusing was asked for: as many as fit, with the kernels measured best
        entry = calibrate.entry_for(config, device, threads)
        rates = {v: r for options in entry.get("fused", {}).values()
                 for v, r in calibrate.group_variants(options).items()}
        variant = max(rates, key=rates.get) if rates else ("captured" if device.type == "cuda" else "plain")
        return calibrate.FusionPlan(capacity, runnable_loop(variant, config), 0.0, 0.0)
    return None


def evaluation_loop(config: dict, device: torch.device) -> str:
    """The layout a checkpoint's model is evaluated in: on CPU channels-last where calibration
    measured that layout fastest for the model at the batch size nearest evaluation's (the
    predictions are the same up to float rounding), decided once per shape; else plain."""
    return calibrate.evaluation_layout(config, device, training.EVAL_BATCH_SIZE)


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
            model = training.build_model(config)
        _DROPOUT[key] = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    return _DROPOUT[key]


_DROPOUT: dict[tuple, bool] = {}
