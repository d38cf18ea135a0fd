"""Parquet layout of a run folder: writing rows as trials report, reading a run back.

    results/<run>/
      trials.parquet   one row per trial (status, config columns, summary metrics)
      epochs.parquet   one row per (trial_id, epoch), config columns included
      run.json         study, options, versions, data checksums, times, host
      tune/            Ray Tune's experiment folder (checkpoints, TensorBoard events)

`RunWriter` keeps every row in memory (a study's epochs are a few MB at most),
rewrites both Parquet files on `flush()` under a temporary name and renames them into
place, so a reader never sees a half-written file and a crash loses at most the rows
since the last flush. Rows are keyed by (trial_id, epoch): a reported epoch that
arrives again (a retried trial) replaces the old row instead of duplicating it.

This module is pure pandas/pyarrow and never imports Ray.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

TRIALS_FILE, EPOCHS_FILE, RUN_FILE = "trials.parquet", "epochs.parquet", "run.json"
TUNE_DIR = "tune"
EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "train_time_s", "time_total_s"]
TRIAL_FACTS = ["params", "device", "node_id", "gpu_fraction", "threads"]  # constant per trial
SUMMARY_COLUMNS = [
    "params", "best_val_acc", "best_epoch", "val_loss_at_best", "min_train_loss",
    "min_train_loss_epoch", "final_train_loss", "final_val_loss", "overfit_gap",
    "time_per_epoch_s", "total_time_s", "gpu_fraction", "node_id", "device", "threads", "test_acc", "test_loss",
]


def write_atomic(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp over `path`: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    def write(tmp: Path):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    write_atomic(path, write)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def summarize_trials(epochs: pd.DataFrame, trials: pd.DataFrame, max_epochs: int) -> pd.DataFrame:
    """One row per trial from its epoch rows.

    `trials` has one row per trial: trial_id, status, the config columns and the
    trial facts (params, node_id, ...). A trial with no epoch yet keeps null metrics.
    `stopped_early` means the scheduler ended the trial before `max_epochs`.
    """
    config_columns = [c for c in trials.columns if c not in ("trial_id", "status", *TRIAL_FACTS)]
    rows = []
    by_trial = {tid: g.sort_values("epoch") for tid, g in epochs.groupby("trial_id", sort=False)} if len(epochs) else {}
    for trial in trials.itertuples(index=False):
        trial = trial._asdict()
        history = by_trial.get(trial["trial_id"])
        row = {"trial_id": trial["trial_id"], "status": trial["status"]}
        n_epochs = 0 if history is None else len(history)
        row["stopped_early"] = trial["status"] == "TERMINATED" and n_epochs < max_epochs
        row["epochs"] = n_epochs
        row.update({c: trial[c] for c in config_columns})
        metrics = dict.fromkeys(SUMMARY_COLUMNS, np.nan)
        metrics.update({c: trial.get(c) for c in TRIAL_FACTS})
        if n_epochs:
            best = history.loc[history["val_acc"].idxmax()]  # first epoch at the best value
            lowest_train = history.loc[history["train_loss"].idxmin()]
            last = history.iloc[-1]
            metrics.update(
                best_val_acc=best["val_acc"], best_epoch=int(best["epoch"]),
                val_loss_at_best=best["val_loss"],
                min_train_loss=lowest_train["train_loss"], min_train_loss_epoch=int(lowest_train["epoch"]),
                final_train_loss=last["train_loss"], final_val_loss=last["val_loss"],
                overfit_gap=last["val_loss"] - last["train_loss"],
                time_per_epoch_s=history["epoch_time_s"].mean(), total_time_s=history["time_total_s"].max(),
            )
        row.update({c: metrics[c] for c in SUMMARY_COLUMNS})
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        for column in ("best_epoch", "min_train_loss_epoch", "params", "threads"):
            table[column] = table[column].astype("Int64")
        for column in ("test_acc", "test_loss", "gpu_fraction"):
            table[column] = table[column].astype("float64")
    return table


class RunWriter:
    """Collects reported epochs and trial states; flushes both Parquet files atomically."""

    def __init__(self, run_dir: Path, max_epochs: int, config_keys: list[str] = (),
                 flush_interval_s: float = 5.0):
        self.run_dir = Path(run_dir)
        self.max_epochs = max_epochs
        self.flush_interval_s = flush_interval_s
        self._epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self._trials: dict[str, dict[str, Any]] = {}
        self._config_keys: list[str] = list(config_keys)  # column order; unseen keys are appended
        self._last_flush = time.monotonic()
        self._dirty = False

    def _trial(self, trial_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        if trial_id not in self._trials:
            self._trials[trial_id] = {"trial_id": trial_id, "status": "PENDING", "config": dict(config)}
            self._config_keys += [k for k in config if k not in self._config_keys]
        return self._trials[trial_id]

    def set_status(self, trial_id: str, config: Mapping[str, Any], status: str) -> None:
        self._trial(trial_id, config)["status"] = status
        self._dirty = True

    def add_epoch(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Record one reported result (the trainable's metrics plus Tune's time_total_s)."""
        trial = self._trial(trial_id, config)
        if trial["status"] == "PENDING":
            trial["status"] = "RUNNING"
        trial.update({k: result[k] for k in TRIAL_FACTS if k in result})
        epoch = int(result["epoch"])
        self._epochs[(trial_id, epoch)] = {
            "trial_id": trial_id, "epoch": epoch, **{k: result.get(k) for k in EPOCH_METRICS},
        }
        self._dirty = True

    def maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(trials, epochs) as they would be written now."""
        keys = self._config_keys
        trial_rows = [
            {"trial_id": t["trial_id"], "status": t["status"], **{k: t["config"].get(k) for k in keys},
             **{k: t.get(k) for k in TRIAL_FACTS}}
            for _, t in sorted(self._trials.items())
        ]
        trials = pd.DataFrame(trial_rows, columns=["trial_id", "status", *keys, *TRIAL_FACTS])
        epoch_rows = [
            {**row, **{k: self._trials[row["trial_id"]]["config"].get(k) for k in keys}}
            for _, row in sorted(self._epochs.items())
        ]
        epochs = pd.DataFrame(epoch_rows, columns=["trial_id", "epoch", *EPOCH_METRICS, *keys])
        return summarize_trials(epochs, trials, self.max_epochs), epochs

    def flush(self) -> None:
        trials, epochs = self.tables()
        write_parquet(epochs, self.run_dir / EPOCHS_FILE)
        write_parquet(trials, self.run_dir / TRIALS_FILE)
        self._last_flush = time.monotonic()
        self._dirty = False


def read_trials(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / TRIALS_FILE)


def read_epochs(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / EPOCHS_FILE)
