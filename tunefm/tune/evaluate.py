"""Test-set evaluation of a run's winners, from each trial's best-validation checkpoint.

    tunefm evaluate results/fourfam-20261122-101500 --test-top 3
    evaluate.run(run_dir, top_k=3)                     # the same from Python

Which trials: every seed of each model's top K configurations by mean validation
accuracy (`ranking.top_configs`), chosen before the test images are even loaded, so
model selection never sees the test set. Each is rebuilt from its config, loaded from
the checkpoint of its best validation epoch (under `tune/<trial_id>/`, or the
same under the run's `--storage`, read through pyarrow's file systems), and run once
over the test split. Results replace any earlier evaluation:

    trials.parquet/     test_acc, test_loss filled for the evaluated trials (null elsewhere)
    confusion.parquet   trial_id, true_label, pred_label, count (100 rows per trial)
    run.json            "evaluation": which trials, K, device, test size, checkpoints skipped

Needs torch but not Ray: it reads checkpoint files directly (`run/checkpoints.py`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import torch
from torch import nn

from tunefm.engine import data, devices, loops, training, training_plan
from tunefm.errors import UserError
from tunefm.run import checkpoints, ranking, store, trial_summary, writer
from tunefm.run.record import RunRecord, live_search_pid

DEFAULT_TOP_K = 3


@dataclass
class Evaluation:
    """What an evaluation did; `record()` is what run.json keeps under "evaluation"."""

    top_k: int
    test_size: int
    device: str | None = None
    evaluated: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # trial id -> why

    def record(self) -> dict:
        return {"top_k": self.top_k, "trials": self.evaluated, "skipped": self.skipped,
                "test_size": self.test_size, "device": self.device,
                "at": dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def load_state(fs: pafs.FileSystem, folder: str) -> dict:
    """A checkpoint's state, every tensor on the CPU (whatever device wrote it)."""
    return training.load_checkpoint(checkpoints.read_bytes(fs, checkpoints.state_path(folder)))


def checkpoint_epochs(fs: pafs.FileSystem, trial_dir: str) -> dict[int, str]:
    """epoch -> checkpoint folder, for the checkpoints Tune kept for one trial (`checkpoints.listing`)."""
    found = {}
    for checkpoint in checkpoints.listing(fs, trial_dir):
        if not checkpoint.has_state:
            continue
        # written before meta.json existed: read the epoch from the state itself
        epoch = checkpoint.epoch if checkpoint.epoch is not None else load_state(fs, checkpoint.folder)["epoch"]
        found[int(epoch)] = checkpoint.folder
    return found


def trial_config(row: pd.Series, keys: list[str]) -> dict:
    """A trial's config from its trials.parquet row, as plain Python values."""
    config = {}
    for key in keys:
        value = row[key]
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            continue
        value = value.item() if isinstance(value, np.generic) else value
        # A column with gaps (a key only some trials set) comes back as float: 3.0 was 3.
        config[key] = int(value) if isinstance(value, float) and value.is_integer() else value
    return config


def load_model(config: dict, fs: pafs.FileSystem, checkpoint: str, device: torch.device) -> nn.Module:
    """The checkpoint's model on `device`, in the layout `training_plan.evaluation_loop` picks."""
    model = loops.place_model(training.build_model(config), training_plan.evaluation_loop(config, device), device)
    model.load_state_dict(load_state(fs, checkpoint)["model"])
    return model.eval()


def confusion_rows(trial_id: str, true: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """All 10 x 10 (true, predicted) counts for one trial, zeros included."""
    n = len(data.CLASSES)
    counts = np.bincount(true.astype(np.int64) * n + predicted, minlength=n * n)
    return pd.DataFrame({"trial_id": trial_id, "true_label": np.repeat(np.arange(n), n),
                         "pred_label": np.tile(np.arange(n), n), "count": counts.astype(np.int64)})


def evaluate_trials(run_dir: Path, test_x: np.ndarray, test_y: np.ndarray, top_k: int = DEFAULT_TOP_K,
                    echo: Callable[[str], None] = print, device: torch.device | None = None,
                    tune_dir: str | None = None, kept: dict | None = None) -> Evaluation:
    """Evaluate the run's top configurations on (test_x, test_y); write trials and confusion.

    `tune_dir` is where Tune kept the checkpoints: a path or URI (default: <run>/tune).
    `kept`: run.json's "checkpoints"; a chosen trial whose checkpoints that policy deleted
    is a UserError before anything is evaluated or written. The caller records
    `Evaluation.record()` in run.json.
    """
    run_dir = Path(run_dir)
    fs, tune_path = pafs.FileSystem.from_uri(tune_dir or str((run_dir / store.TUNE_DIR).resolve()))
    trials = store.read_trials(run_dir)
    chosen = ranking.top_configs(trials, top_k)  # from validation numbers only
    for trial_id in chosen:
        gone = checkpoints.gone_message(trial_id, kept or {})
        if gone:
            raise UserError(gone)
    outcome = Evaluation(top_k, len(test_y))
    trials["test_acc"], trials["test_loss"] = np.nan, np.nan
    tables = []
    if chosen:
        device = device or torch.device("cuda" if devices.cuda_available() else "cpu")
        outcome.device = device.type
        echo(f"Test set ({len(test_y)} images): evaluating {len(chosen)} trial(s), the top {top_k} "
             f"configuration(s) per model by val acc, from their best-validation checkpoints on {device.type}")
        started = time.perf_counter()
        x, y = training.to_tensors(test_x, test_y, device)
        keys = trial_summary.config_columns(trials)
        by_id = trials.set_index("trial_id", drop=False)
        for trial_id in chosen:
            row = by_id.loc[trial_id]
            best_epoch = int(row["best_epoch"])
            found = checkpoint_epochs(fs, f"{tune_path}/{trial_id}")
            if best_epoch not in found:
                kept = ", ".join(map(str, sorted(found))) or "none"
                outcome.skipped[trial_id] = f"no checkpoint of best epoch {best_epoch} (kept: {kept})"
                continue
            config = trial_config(row, keys)
            model = load_model(config, fs, found[best_epoch], device)
            loss, predicted = training.predict(model, x, y, loss_fn=training.loss_function(config))
            predicted = predicted.cpu().numpy()
            accuracy = float((predicted == test_y).mean())
            trials.loc[trials["trial_id"] == trial_id, ["test_acc", "test_loss"]] = [accuracy, loss]
            tables.append(confusion_rows(trial_id, test_y, predicted))
            outcome.evaluated.append(trial_id)
        for trial_id, why in outcome.skipped.items():
            echo(f"Warning: trial {trial_id} not evaluated: {why}")
        echo(f"Test set: {len(outcome.evaluated)} trial(s) evaluated in {time.perf_counter() - started:.1f} s")
    else:
        echo("Test set: no trial has a validation result yet; nothing to evaluate")
    no_rows = confusion_rows("", np.zeros(0, np.int64), np.zeros(0, np.int64)).iloc[:0]  # the columns, typed
    confusion = pd.concat(tables, ignore_index=True) if tables else no_rows
    # Confusion first: a reader that sees new test columns also finds their matrices.
    store.write_parquet(confusion, run_dir / store.CONFUSION_FILE)
    writer.write_trials(run_dir, trials)
    return outcome


def check_not_running(run_dir: Path, info: dict) -> None:
    """Refuse a run whose search is still alive: its next flush would drop the test columns."""
    pid = live_search_pid(info)
    if pid is not None:
        raise UserError(f"run {run_dir} is still running (process {pid}); it evaluates its winners itself "
                        f"when the search ends, or evaluate it after that")


def load_run_data(info: dict, data_dir: str | None) -> data.Splits:
    """The run's data again, with the sizes it used; its files must be the ones it used."""
    options, recorded_data = info.get("options", {}), info.get("data", {})
    source = data_dir
    if source is None and recorded_data.get("source") and Path(recorded_data["source"]).is_dir():
        source = recorded_data["source"]  # else: TUNEFM_DATA_DIR or the cache, as for a search
    splits = data.load(source, options.get("train_size"), options.get("val_size"), options.get("test_size"))
    recorded = recorded_data.get("sha256", {})
    for name, digest in splits.checksums.items():
        if name in recorded and recorded[name] != digest:
            raise UserError(f"{Path(splits.source) / name} differs from the file this run used "
                            f"(SHA-256 {digest[:12]}... vs {recorded[name][:12]}...); give --data-dir the "
                            f"run's data")
    return splits


def run(run_dir: Path, top_k: int | None = None, data_dir: str | None = None,
        echo: Callable[[str], None] = print) -> Evaluation:
    """`tunefm evaluate`: evaluate an existing (finished or interrupted) run.

    `top_k` defaults to the run's study's `test_top` (else 3)."""
    if top_k is not None and top_k < 1:
        raise UserError(f"--test-top must be >= 1, got {top_k}")
    tables = store.load_run(run_dir)  # one-line errors for a missing, empty or damaged run
    if top_k is None:
        top_k = int(tables.info.get("study", {}).get("test_top") or DEFAULT_TOP_K)  # a study's 0 means 3 here
    check_not_running(run_dir, tables.info)
    splits = load_run_data(tables.info, data_dir)
    outcome = evaluate_trials(run_dir, splits.test_x, splits.test_y, top_k, echo,
                              tune_dir=tables.info.get("storage"),  # None: the run folder's own tune/
                              kept=tables.info.get("checkpoints"))
    if (Path(run_dir) / store.RUN_FILE).exists():
        RunRecord.from_json(tables.info).evaluated(outcome.record()).save(run_dir)
    return outcome
