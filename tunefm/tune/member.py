"""The Ray Tune trainable of a fused trial: a member of an executor's group, not a training loop.

    tune.with_parameters(member_trainable, coordinator="tunefm-coordinator-...")

It asks the run's coordinator (`placement.py`) for the executor of its device, joins it
(fresh, or with the checkpoint Tune restored it from: a retry, a resume), then asks for one
epoch at a time and reports each exactly as a solo trial does: the same metrics, the same
checkpoint files (`state.pt`, `meta.json`), plus where it ran (`execution`, `fused_group`,
`group_size`). The stopping rule stops it like any trial; the search tells the executor (`Membership`).

It imports neither torch nor pandas: a trial process only waits, reports and writes files,
so sixteen of them cost little beside the one executor that trains them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Mapping

import ray
from ray import tune

from tunefm.run import checkpoints
from tunefm.tune import interrupt


def member_trainable(config: dict, coordinator: str, tune_dir: str | None = None,
                     resume_at: Mapping[str, int] | None = None) -> None:
    """A fused group's member as a Tune trial (`tune_dir`, `resume_at`: as for a solo trial,
    trial.tune_trainable)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    interrupt.quiet_exit_during_garbage_collection()
    started_at = time.time()  # as a solo trial's: when the trial began, waiting for its executor included
    context = tune.get_context()
    trial_id = context.get_trial_id()
    resources = context.get_trial_resources().required_resources
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    runtime = ray.get_runtime_context()
    executor = ray.get(ray.get_actor(coordinator).executor_for.remote(trial_id, config, runtime.get_node_id(),
                                                                      gpu_ids))
    checkpoint, state, epoch = tune.get_checkpoint(), None, 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, checkpoints.STATE_FILE), "rb") as f:
                state = f.read()
            with open(os.path.join(folder, checkpoints.META_FILE)) as f:
                epoch = int(json.load(f)["epoch"])
    state = checkpoints.newer_state(tune_dir, trial_id, epoch, resume_at) or state
    ray.get(executor.join.remote(trial_id, config, state))
    own = {"gpu_fraction": float(resources.get("GPU", 0.0)), "started_at": started_at}
    while (epoch := ray.get(executor.next_epoch.remote(trial_id))) is not None:
        metrics, state, facts = epoch
        with tempfile.TemporaryDirectory() as folder:
            checkpoints.write(folder, checkpoints.files(state, metrics["epoch"], metrics["val_acc"]))
            tune.report({**metrics, **facts, **own}, checkpoint=tune.Checkpoint.from_directory(folder))
