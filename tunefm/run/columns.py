"""The columns of a run's tables: plain Python.

The trial entry points, the writer and the progress line need these in every Ray
worker; importing this module pulls in neither pandas nor pyarrow (store.py, which
reads and writes the tables, does).
"""

from __future__ import annotations

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
# was running when the search was stopped; stopped_at_rung: the rung (epoch) where the stopping
# rule ended it; retries: restarts from a checkpoint after a failure.
TRIAL_STATE = ["trial_id", "status", "stopped_early", "stopped_at_rung", "epochs", "retries"]
INTERRUPTED = "INTERRUPTED"

INT_COLUMNS = {"epochs", "stopped_at_rung", "retries", "epoch", "best_epoch", "min_train_loss_epoch", "params", "threads",
               "group_size"}
TEXT_COLUMNS = {"trial_id", "status", "device", "node_id", "node_ip", "gpu_ids", "execution", "fused_group"}
