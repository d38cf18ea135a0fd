"""The columns of a run's tables, and how many epochs a trial runs: plain Python.

The trainable, the fused executor and the progress line need these in every Ray
worker; importing this module pulls in neither pandas nor pyarrow (store.py, which
reads and writes the tables, does).
"""

from __future__ import annotations

from typing import Any, Mapping

EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "train_time_s", "time_total_s"]
# Per trial, from its latest epoch: where and on what it ran (started_at: Unix time its training
# began; execution: its loop, or fused:<kernels> in a fused group; fused_group: that group's id, ""
# alone; group_size: the members the group trained that epoch).
TRIAL_FACTS = ["params", "device", "node_id", "node_ip", "gpu_fraction", "gpu_ids", "threads", "started_at",
               "execution", "fused_group", "group_size"]
TRAIN_ACC_TARGET = 0.9  # seed 004 compares trials by the time to reach 90% train accuracy
SUMMARY_COLUMNS = [
    "params", "best_val_acc", "best_epoch", "val_loss_at_best", "min_train_loss",
    "min_train_loss_epoch", "final_train_loss", "final_val_loss", "overfit_gap",
    "time_per_epoch_s", "total_time_s", "time_to_90_train_acc_s", "gpu_fraction", "gpu_ids", "node_id", "node_ip",
    "device", "threads", "started_at", "execution", "fused_group", "group_size", "test_acc", "test_loss",
]
# Numeric per-trial figures a study may compare with what its seed reported.
REPORTABLE = [c for c in SUMMARY_COLUMNS if c not in TRIAL_FACTS or c == "params"]
# status: Tune's (PENDING, RUNNING, TERMINATED, ERROR), or INTERRUPTED for a trial that
# was running when the search was stopped; retries: restarts from a checkpoint after a failure.
TRIAL_STATE = ["trial_id", "status", "stopped_early", "epochs", "retries"]
INTERRUPTED = "INTERRUPTED"

# Config keys that change no tensor's shape: trials may differ in them and still train as one
# fused group (fused.shape_key: every other key must match).
PER_MEMBER_KEYS = frozenset({"lr", "momentum", "weight_decay", "lr_decay", "seed", "init", "augment",
                             "max_epochs"})

INT_COLUMNS = {"epochs", "retries", "epoch", "best_epoch", "min_train_loss_epoch", "params", "threads", "group_size"}
TEXT_COLUMNS = {"trial_id", "status", "device", "node_id", "node_ip", "gpu_ids", "execution", "fused_group"}


def is_missing(value: Any) -> bool:
    """None, NaN (NaT), or pandas' NA (which a Parquet row holds for a config key a trial lacks)."""
    if value is None:
        return True
    try:
        return bool(value != value)  # only NaN and NaT differ from themselves
    except TypeError:  # pd.NA: its comparison is NA, which has no truth value
        return True


def rough_shape(config: Mapping[str, Any]) -> str:
    """A trial's shape as far as it shows without the model registry (which needs torch): its
    config less the per-member keys. Trials with equal rough shapes share a `fused.shape_key`;
    the coordinator uses it to put same-shape trials on the same executor."""
    return repr(sorted((k, repr(v)) for k, v in config.items() if k not in PER_MEMBER_KEYS))


def epoch_limit(config: Mapping[str, Any], max_epochs: int) -> int:
    """The epochs a trial runs if nothing stops it: the study's, or fewer by its own
    `max_epochs` config key (null in a Parquet row of a trial without one)."""
    own = config.get("max_epochs")
    return max_epochs if is_missing(own) else min(max_epochs, int(own))
