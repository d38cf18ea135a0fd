"""The Ray Tune trainable of a solo trial: one model trained for up to N epochs.

    tune.with_parameters(tune_trainable, arrays=arrays, max_epochs=100, loop="auto")

Data arrives once through the object store as uint8 arrays. The trial asks
`training_plan` how it trains (device, loop; from its checkpoint's loop when Tune restored
it), trains with `solo.fit`, and after every epoch reports

    epoch, train_loss, train_acc, val_loss, val_acc, epoch_time_s

(plus constant trial facts: params, device, node_id, node_ip, gpu_fraction, gpu_ids, threads,
started_at) together with a checkpoint (`run/checkpoints.py`: state.pt and meta.json). Tune
keeps each trial's best-validation checkpoint (by `checkpoint_score`) and its latest; the
test-set evaluation loads the best one.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Mapping

import numpy as np
import ray
import torch
from ray import tune

from tunefm.engine import devices, loops, models, solo, training, training_plan
from tunefm.run import checkpoints
from tunefm.tune import interrupt


def tune_trainable(config: dict, arrays: dict[str, np.ndarray], max_epochs: int, loop: str = loops.AUTO,
                   tune_dir: str | None = None, resume_at: Mapping[str, int] | None = None) -> None:
    """Ray Tune entry point; wrap with `tune.with_parameters(arrays=..., max_epochs=..., loop=...)`.
    A resumed search adds `tune_dir` and `resume_at` ({trial id: the last epoch the run
    recorded}): a trial continues from its newest checkpoint up to that epoch, where Tune's
    saved state names an older one (`checkpoints.newer_state`)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    interrupt.quiet_exit_during_garbage_collection()
    context = tune.get_context()
    resources = context.get_trial_resources().required_resources
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    device = training_plan.trial_device(gpu_ids)
    if loop != loops.AUTO:  # pinned: the same bits every run, on CUDA too
        devices.make_deterministic(device)

    checkpoint, saved = tune.get_checkpoint(), None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = training.load_checkpoint(os.path.join(folder, checkpoints.STATE_FILE))
    newer = checkpoints.newer_state(tune_dir, context.get_trial_id(), saved["epoch"] if saved else 0, resume_at)
    saved = training.load_checkpoint(newer) if newer is not None else saved
    steps = training_plan.training_steps(config, len(arrays["train_y"]), max_epochs)
    plan = training_plan.plan_trial(config, device, loop, steps, saved)
    state = training.init_state(config, device, plan.loop)
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
    for metrics, state in solo.fit(config, arrays, max_epochs, device, state):
        with tempfile.TemporaryDirectory() as folder:
            checkpoints.write(folder, checkpoints.files(training.checkpoint_bytes(state.state_dict()),
                                                        metrics["epoch"], metrics["val_acc"]))
            score = training.checkpoint_score(metrics["val_acc"], metrics["epoch"])
            ran = {"execution": metrics.pop("execution", state.loop)}
            tune.report({**metrics, **trial_facts, **ran, "checkpoint_score": score},
                        checkpoint=tune.Checkpoint.from_directory(folder))
