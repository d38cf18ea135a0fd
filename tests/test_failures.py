"""Trials that lose their worker: a killed trial process is retried from the last checkpoint
(`--max-failures`), and the retried trial trains exactly the curve an uninterrupted one does.
Real Ray, real processes killed with SIGKILL (only ours). A whole node lost mid-trial is
test_autoscaling.py's: its trials continue from their checkpoints on the other nodes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import own_processes
from test_resume import restored_from_checkpoint

from tunefm.engine import data, solo
from tunefm.run import checkpoints, store, trial_summary
from tunefm.tune.search import run
from tunefm.tune.settings import SearchSettings

SIZES = dict(train_size=2000, val_size=500)


def trial_processes() -> list[int]:
    """The trial actors of this test session's own Ray (not the background quick search's)."""
    found = []
    for pid in own_processes():
        try:
            if b"ImplicitFunc" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def search_killing_its_trial(settings: SearchSettings, after_epochs: int, echo=lambda line: None) -> list[int]:
    """Run the one-trial search `settings` in a thread; SIGKILL the trial's worker once
    `after_epochs` epochs are in Parquet (flushed at every epoch); returns the pids killed."""
    run_dir = Path(settings.results_dir) / settings.name
    search = threading.Thread(target=run, args=(settings,), kwargs={"echo": echo})
    search.start()
    killed = []
    while search.is_alive() and not killed:
        if store.has_results(run_dir) and len(store.read_epochs(run_dir)) >= after_epochs:
            killed = trial_processes()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)  # no warning, no cleanup: as the OOM killer does it
        time.sleep(0.05)
    search.join()
    return killed


@pytest.mark.slow
def test_a_killed_trial_is_retried_from_its_checkpoint_and_matches_an_uninterrupted_one(
        ray_session, tmp_path, data_dir):
    config = dict(model="iaro2", lr=0.01, batch_size=8)
    settings = SearchSettings(space="fourfam", sets=tuple(f"{k}={v}" for k, v in config.items()), max_epochs=4,
                              data_dir=str(data_dir), results_dir=str(tmp_path), name="kill", test_top=0,
                              flush_interval_s=0, **SIZES)
    run_dir, lines = tmp_path / "kill", []
    assert len(search_killing_its_trial(settings, 2, lines.append)) == 1  # it dies in epoch 3 (or 4)

    trials, epochs = store.read_trials(run_dir), store.read_epochs(run_dir).sort_values("epoch")
    assert trials.status.tolist() == ["TERMINATED"] and trials.retries.tolist() == [1]
    assert epochs.epoch.tolist() == [1, 2, 3, 4]
    trial_id = trials.trial_id.item()
    assert restored_from_checkpoint(run_dir / store.TUNE_DIR, trial_id)
    assert sum("failed:" in line and "retrying from its last checkpoint (retry 1 of 2)" in line
               for line in lines) == 1

    # the same config trained straight through, in this process
    splits = data.load(data_dir, **SIZES)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    row = trials.iloc[0]
    full = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in trial_summary.config_columns(trials)
            if not (isinstance(row[k], float) and row[k] != row[k])}  # the trial's config, NaN keys left out
    assert {k: full[k] for k in config} == config
    torch.set_num_threads(1)
    straight = [metrics for metrics, _ in solo.fit(full, arrays, 4, torch.device("cpu"), loop=row.execution)]
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert epochs[column].tolist() == pytest.approx([m[column] for m in straight], abs=1e-6, rel=0)


@pytest.mark.slow
def test_max_failures_zero_lets_a_killed_trial_fail(ray_session, tmp_path, data_dir):
    settings = SearchSettings(space="fourfam", sets=("model=iaro2", "lr=0.01", "batch_size=8"), max_epochs=4,
                              data_dir=str(data_dir), results_dir=str(tmp_path), name="nofail", test_top=0,
                              flush_interval_s=0, max_failures=0, **SIZES)
    run_dir = tmp_path / "nofail"
    assert len(search_killing_its_trial(settings, 1)) == 1
    trials = store.read_trials(run_dir)
    assert trials.status.tolist() == ["ERROR"] and trials.retries.tolist() == [0]
    assert 1 <= trials.epochs.item() < 4  # what it trained before it died is kept
    assert store.read_json(run_dir / store.RUN_FILE)["status"] == "completed with errors"


def checkpointed_epoch(trial_dir: Path) -> int:
    """The latest epoch a trial has checkpointed so far (0: none yet)."""
    epochs = []
    for meta in trial_dir.glob(f"checkpoint_*/{checkpoints.META_FILE}"):
        try:
            epochs.append(json.loads(meta.read_text())["epoch"])
        except (OSError, ValueError):
            continue  # being copied into the storage right now
    return max(epochs, default=0)
