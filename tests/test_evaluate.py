"""Test-set evaluation: which trials, which checkpoint, what is written, and its errors."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
from conftest import linked_copy, write_idx

from tunefm.analysis import queries
from tunefm.engine import data, solo, training
from tunefm.errors import UserError
from tunefm.run import checkpoints, ranking, store, trial_summary
from tunefm.run.writer import RunWriter
from tunefm.tune import evaluate

CONFIG = {"model": "iaro1", "lr": 0.05, "batch_size": 32, "optimizer": "sgd", "momentum": 0.0,
          "weight_decay": 0.0, "seed": 1}


def test_checkpoint_score_prefers_higher_accuracy_then_the_earlier_epoch():
    score = training.checkpoint_score
    assert score(0.80, 2) > score(0.80, 3)  # a tie keeps the first epoch at the best value
    assert score(0.8001, 10_000) > score(0.80, 1)  # any real accuracy step outweighs the epoch term


def test_confusion_rows_count_every_pair():
    rows = evaluate.confusion_rows("t", np.array([0, 0, 1, 9]), np.array([0, 1, 1, 0]))
    assert len(rows) == 100 and rows["count"].sum() == 4
    counts = rows.set_index(["true_label", "pred_label"])["count"]
    assert counts[(0, 0)] == 1 and counts[(0, 1)] == 1 and counts[(1, 1)] == 1 and counts[(9, 0)] == 1


@pytest.fixture(scope="module")
def splits(data_dir):
    return data.load(data_dir, train_size=600, val_size=300, test_size=500)


def hand_made_run(run_dir, splits, epochs_val_acc=(0.9, 0.5)):
    """A run folder without Ray: one trial trained for len(epochs_val_acc) epochs, a checkpoint
    per epoch, and recorded val accuracies chosen so that the best epoch is not the last."""
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    writer = RunWriter(run_dir, max_epochs=len(epochs_val_acc), config_keys=list(CONFIG))
    torch.set_num_threads(1)
    states = {}
    for (metrics, state), val_acc in zip(solo.fit(CONFIG, arrays, len(epochs_val_acc), torch.device("cpu")),
                                         epochs_val_acc):
        folder = run_dir / store.TUNE_DIR / "t0" / f"checkpoint_{metrics['epoch'] - 1:06d}"
        folder.mkdir(parents=True)
        torch.save(state.state_dict(), folder / checkpoints.STATE_FILE)
        (folder / checkpoints.META_FILE).write_text(json.dumps({"epoch": metrics["epoch"], "val_acc": val_acc}))
        states[metrics["epoch"]] = {k: v.clone() for k, v in state.model.state_dict().items()}
        writer.add_epoch("t0", CONFIG, {**metrics, "val_acc": val_acc, "time_total_s": 1.0, "params": 21352})
    writer.set_status("t0", CONFIG, "TERMINATED")
    writer.flush()
    return states


def test_evaluation_uses_the_best_validation_epoch_not_the_last(tmp_path, splits):
    states = hand_made_run(tmp_path, splits, epochs_val_acc=(0.9, 0.5))
    outcome = evaluate.evaluate_trials(tmp_path, splits.test_x, splits.test_y, top_k=3, echo=lambda s: None)
    assert outcome.evaluated == ["t0"] and outcome.skipped == {}

    model = training.build_model(CONFIG)
    model.load_state_dict(states[1])  # epoch 1 had the best (recorded) val acc
    x, y = training.to_tensors(splits.test_x, splits.test_y, torch.device("cpu"))
    loss, accuracy = training.evaluate(model, x, y)
    trial = store.read_trials(tmp_path).iloc[0]
    assert trial.best_epoch == 1
    assert trial.test_acc == accuracy and trial.test_loss == pytest.approx(loss, rel=1e-6)
    model.load_state_dict(states[2])
    assert training.evaluate(model, x, y)[1] != accuracy  # the last epoch would have given another answer

    confusion = pd.read_parquet(tmp_path / store.CONFUSION_FILE)
    assert len(confusion) == 100 and confusion["count"].sum() == 500
    assert queries.confusion(confusion, store.read_trials(tmp_path)).accuracy == accuracy


def test_a_trial_without_its_best_checkpoint_is_skipped_and_said(tmp_path, splits):
    hand_made_run(tmp_path, splits, epochs_val_acc=(0.9, 0.5))
    best = tmp_path / store.TUNE_DIR / "t0" / "checkpoint_000000"
    for f in best.iterdir():
        f.unlink()
    best.rmdir()
    lines = []
    outcome = evaluate.evaluate_trials(tmp_path, splits.test_x, splits.test_y, echo=lines.append)
    assert outcome.skipped == {"t0": "no checkpoint of best epoch 1 (kept: 2)"}
    assert "Warning: trial t0 not evaluated: no checkpoint of best epoch 1 (kept: 2)" in lines
    assert store.read_trials(tmp_path).test_acc.isna().all()
    assert pd.read_parquet(tmp_path / store.CONFUSION_FILE).empty


def test_the_winners_are_evaluated_from_their_best_validation_checkpoints(small_fourfam, data_dir):
    """small_fourfam ran evaluate_trials as a search does when it ends (test_top 3 per model)."""
    trials = store.read_trials(small_fourfam)
    evaluated = trials[trials.test_acc.notna()]
    assert sorted(evaluated.trial_id) == ranking.top_configs(trials, 3)
    assert evaluated.groupby("model").size().to_dict() == {f"iaro{i}": 3 for i in range(1, 5)}
    assert trials.test_loss.notna().sum() == 12

    confusion = pd.read_parquet(small_fourfam / store.CONFUSION_FILE)
    assert set(confusion.trial_id) == set(evaluated.trial_id)
    per_trial = confusion.groupby("trial_id")
    assert (per_trial.size() == 100).all() and (per_trial["count"].sum() == 256).all()
    diagonal = confusion[confusion.true_label == confusion.pred_label].groupby("trial_id")["count"].sum()
    assert np.allclose(diagonal.sort_index() / 256, evaluated.set_index("trial_id").test_acc.sort_index())
    info = store.read_json(small_fourfam / store.RUN_FILE)
    assert info["evaluation"]["trials"] == sorted(evaluated.trial_id) and info["evaluation"]["top_k"] == 3

    # One trial again by hand, from the checkpoint of its best validation epoch.
    trial = evaluated.iloc[0]
    fs = pafs.LocalFileSystem()
    folder = evaluate.checkpoint_epochs(fs, str(small_fourfam / store.TUNE_DIR / trial.trial_id))[trial.best_epoch]
    assert json.loads((Path(folder) / checkpoints.META_FILE).read_text())["val_acc"] == trial.best_val_acc
    config = evaluate.trial_config(trial, trial_summary.config_columns(trials))
    model = evaluate.load_model(config, fs, folder, torch.device("cpu"))
    test = data.load(data_dir, 512, 256, 256)
    loss, accuracy = training.evaluate(model, *training.to_tensors(test.test_x, test.test_y, torch.device("cpu")))
    assert accuracy == trial.test_acc and loss == pytest.approx(trial.test_loss, rel=1e-5)


def test_evaluate_an_existing_run_again_with_another_k(small_fourfam, tmp_path):
    run_dir = linked_copy(small_fourfam, tmp_path / "copy")
    before = {p.name: p.read_bytes() for p in (small_fourfam / store.TRIALS_FILE).iterdir()}
    outcome = evaluate.run(run_dir, top_k=1, echo=lambda s: None)
    trials = store.read_trials(run_dir)
    assert sorted(outcome.evaluated) == sorted(trials[trials.test_acc.notna()].trial_id)
    assert len(outcome.evaluated) == 4  # one configuration per model, replacing the earlier 12
    assert set(pd.read_parquet(run_dir / store.CONFUSION_FILE).trial_id) == set(outcome.evaluated)
    assert store.read_json(run_dir / store.RUN_FILE)["evaluation"]["top_k"] == 1
    original = store.read_trials(small_fourfam).set_index("trial_id").test_acc
    assert (trials.set_index("trial_id").test_acc.dropna() == original[outcome.evaluated]).all()  # deterministic
    after = {p.name: p.read_bytes() for p in (small_fourfam / store.TRIALS_FILE).iterdir()}
    assert after == before  # the original run is untouched


def test_evaluate_refuses_a_running_search_other_test_files_and_bad_k(small_fourfam, tmp_path, copy_of_data):
    run_dir = linked_copy(small_fourfam, tmp_path / "copy")
    with pytest.raises(UserError, match="--test-top must be >= 1, got 0"):
        evaluate.run(run_dir, top_k=0)
    info = store.read_json(run_dir / store.RUN_FILE)
    store.write_json({**info, "status": "running", "pid": os.getpid()}, run_dir / store.RUN_FILE)
    with pytest.raises(UserError, match=f"is still running \\(process {os.getpid()}\\)"):
        evaluate.run(run_dir)
    store.write_json(info, run_dir / store.RUN_FILE)

    labels_file = data.find_file(copy_of_data, data.FILES["test_labels"])
    labels = data.read_idx(labels_file, data.LABELS_MAGIC)
    write_idx(labels_file, (labels + 1) % 10)  # same name and format, other labels
    with pytest.raises(UserError, match="differs from the file this run used"):
        evaluate.run(run_dir, data_dir=str(copy_of_data))
    assert store.read_trials(run_dir).equals(store.read_trials(small_fourfam))
    assert (run_dir / "parts.json").read_bytes() == (small_fourfam / "parts.json").read_bytes()
