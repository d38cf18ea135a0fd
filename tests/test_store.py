"""Parquet layout: per-trial summaries from hand-built epochs, atomic incremental writes."""

import time

import pandas as pd
import pytest

from tunefm.run import columns, store, trial_summary
from tunefm.run.writer import COMPACT_FANOUT, RunWriter


def _result(epoch, train_loss, val_loss, val_acc, t=1.0):
    return {"epoch": epoch, "train_loss": train_loss, "train_acc": 0.5, "val_loss": val_loss,
            "val_acc": val_acc, "epoch_time_s": t, "train_time_s": 0.8 * t, "time_total_s": epoch * t + 0.5,
            "params": 1234, "device": "cpu", "node_id": "n1", "gpu_fraction": 0.25}


def test_trial_summary_from_epochs(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=4, config_keys=["model", "lr"])
    config = {"model": "iaro1", "lr": 0.01, "batch_size": 8}
    for epoch, (tl, vl, va) in enumerate([(1.0, 0.9, 0.6), (0.6, 0.7, 0.8), (0.3, 0.8, 0.8), (0.2, 1.0, 0.7)], 1):
        writer.add_epoch("a", config, _result(epoch, tl, vl, va, t=2.0))
    writer.add_epoch("b", {**config, "lr": 0.1}, _result(1, 2.0, 2.1, 0.1))
    writer.set_status("a", config, "TERMINATED")
    writer.set_status("b", config, "TERMINATED")
    writer.set_status("c", config, "PENDING")
    writer.flush()

    trials = store.read_trials(tmp_path).set_index("trial_id")
    assert list(trials.columns[:8]) == ["status", "stopped_early", "stopped_at_rung", "epochs", "retries", "model",
                                       "lr", "batch_size"]
    a, b, c = trials.loc["a"], trials.loc["b"], trials.loc["c"]
    assert a.epochs == 4 and not a.stopped_early
    assert a.best_val_acc == 0.8 and a.best_epoch == 2 and a.val_loss_at_best == 0.7
    assert a.min_train_loss == 0.2 and a.min_train_loss_epoch == 4
    assert a.final_train_loss == 0.2 and a.final_val_loss == 1.0 and a.overfit_gap == pytest.approx(0.8)
    assert a.time_per_epoch_s == 2.0 and a.total_time_s == 8.5
    assert a.params == 1234 and a.gpu_fraction == 0.25 and a.node_id == "n1"
    assert pd.isna(a.test_acc) and pd.isna(a.test_loss)
    assert b.stopped_early and b.epochs == 1
    assert c.epochs == 0 and not c.stopped_early and pd.isna(c.best_val_acc)

    epochs = store.read_epochs(tmp_path)
    assert len(epochs) == 5 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert {"model", "lr", "batch_size"} <= set(epochs.columns)


def test_time_to_90_train_acc_and_a_trials_own_epoch_limit(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=4, config_keys=["model", "max_epochs"])
    short = {"model": "kahn", "max_epochs": 2}  # a trial that is meant to stop at 2 of 4 epochs
    for epoch, train_acc in [(1, 0.85), (2, 0.92)]:
        writer.add_epoch("short", short, {**_result(epoch, 0.5, 0.6, 0.8, t=3.0), "train_acc": train_acc})
    writer.add_epoch("never", {"model": "kahn", "max_epochs": 4}, _result(1, 0.5, 0.6, 0.8))
    writer.set_status("short", short, "TERMINATED")
    writer.set_status("never", {}, "TERMINATED")
    writer.flush()
    trials = store.read_trials(tmp_path).set_index("trial_id")
    assert not trials.loc["short"].stopped_early  # it reached its own max_epochs
    assert trials.loc["never"].stopped_early
    assert trials.loc["short"].time_to_90_train_acc_s == 6.5  # time_total_s at the end of epoch 2
    assert pd.isna(trials.loc["never"].time_to_90_train_acc_s)


def test_repeated_epoch_replaces_instead_of_duplicating(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=2)
    writer.add_epoch("a", {"model": "m"}, _result(1, 1.0, 1.0, 0.5))
    writer.add_epoch("a", {"model": "m"}, _result(1, 0.9, 0.9, 0.6))  # a retried epoch
    writer.flush()
    epochs = store.read_epochs(tmp_path)
    assert len(epochs) == 1 and epochs.val_acc.item() == 0.6


def test_a_trial_back_at_an_older_checkpoint_drops_its_later_rows(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=4)
    for epoch in (1, 2, 3):
        writer.add_epoch("a", {"model": "m"}, _result(epoch, 1.0, 1.0, 0.5))
    writer.add_epoch("b", {"model": "m"}, _result(3, 1.0, 1.0, 0.5))
    writer.flush()
    writer.add_epoch("a", {"model": "m"}, _result(2, 0.8, 0.8, 0.6))  # restored from epoch 1's checkpoint
    writer.flush()
    epochs = store.read_epochs(tmp_path)
    assert pd.read_parquet(tmp_path / store.EPOCHS_FILE).sort_values(["trial_id", "epoch"]).val_acc.tolist() == [
        0.5, 0.6, 0.5]  # a plain reader of the folder sees the same rows
    assert list(zip(epochs.trial_id, epochs.epoch)) == [("a", 1), ("a", 2), ("b", 3)]
    assert epochs.val_acc.tolist() == [0.5, 0.6, 0.5]


def test_a_resumed_writer_starts_from_the_files_and_keeps_rows_unique(tmp_path):
    first = RunWriter(tmp_path, max_epochs=3, config_keys=["model", "lr"])
    config = {"model": "iaro1", "lr": 0.01}
    for epoch in (1, 2):
        first.add_epoch("a", config, {**_result(epoch, 1.0, 1.0, 0.5 + epoch / 10), "started_at": 100.0})
    first.add_epoch("b", {**config, "lr": 0.1}, _result(1, 1.0, 1.0, 0.3))
    first.set_status("b", {}, "TERMINATED")
    first.add_retry("a", config)
    first.set_status("c", {**config, "lr": 0.5}, "PENDING")
    first.mark_interrupted()
    first.flush()
    interrupted = store.read_trials(tmp_path).set_index("trial_id")
    assert interrupted.status.to_dict() == {"a": "INTERRUPTED", "b": "TERMINATED", "c": "PENDING"}
    assert interrupted.retries.to_dict() == {"a": 1, "b": 0, "c": 0}

    second = RunWriter(tmp_path, max_epochs=3, config_keys=["model", "lr"])
    second.load()
    second.add_epoch("a", config, {**_result(2, 0.9, 0.9, 0.75), "started_at": 200.0})  # epoch 2 again
    second.add_epoch("a", config, {**_result(3, 0.8, 0.8, 0.8), "started_at": 200.0})
    second.set_status("a", config, "TERMINATED")
    second.flush()
    trials, epochs = store.read_trials(tmp_path).set_index("trial_id"), store.read_epochs(tmp_path)
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(zip(epochs.trial_id, epochs.epoch)) == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert epochs.set_index(["trial_id", "epoch"]).val_acc[("a", 2)] == 0.75
    assert trials.status.to_dict() == {"a": "TERMINATED", "b": "TERMINATED", "c": "PENDING"}
    assert trials.loc["a"].epochs == 3 and trials.loc["a"].retries == 1
    assert trials.loc["a"].started_at == 100.0  # when its training first began
    assert trials.loc["c"].lr == 0.5 and trials.loc["b"].best_val_acc == 0.3


def test_flush_is_periodic_and_atomic(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=2, flush_interval_s=3600)
    writer.add_epoch("a", {"model": "m"}, _result(1, 1.0, 1.0, 0.5))
    writer.maybe_flush()
    assert not (tmp_path / store.EPOCHS_FILE).exists()  # interval not reached
    writer.flush_interval_s = 0
    writer.maybe_flush()
    assert len(store.read_epochs(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epochs.parquet", "parts.json", "trials.parquet"]
    assert [p.name for p in (tmp_path / "epochs.parquet").iterdir()] == ["part-000000.parquet"]  # no temp files


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "x.parquet"
    store.write_parquet(pd.DataFrame({"a": [1]}), path)

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.write_atomic(path, broken)
    assert pd.read_parquet(path)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_reading_while_a_writer_replaces_the_file_never_fails(tmp_path):
    """A busy writer renaming new files into place; every read sees one whole file.

    (Plain `pd.read_parquet(path)` fails about 1 read in 20 here: it takes the old size
    and the new bytes.)
    """
    import threading

    import numpy as np

    path = tmp_path / "trials.parquet"
    store.write_parquet(pd.DataFrame({"n": [1], "x": [0.0]}), path)
    stop = threading.Event()

    def writer():
        size = 1
        while not stop.is_set():
            size = size % 400 + 37  # files of changing length
            store.write_parquet(pd.DataFrame({"n": size, "x": np.random.rand(size)}), path)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        frames = [store.read_parquet(path) for _ in range(400)]
    finally:
        stop.set()
        thread.join()
    assert all(len(f) == f["n"].iloc[0] for f in frames)  # each read is one complete file
    assert len({len(f) for f in frames}) > 1  # and the file really changed under the reader


def _flush_forever(run_dir, stop):
    """A writer that adds one epoch per trial and flushes, 50 times a second (a child process)."""
    writer = RunWriter(run_dir, max_epochs=10_000, config_keys=["model"], flush_interval_s=0)
    epoch = 0
    while not stop.is_set():
        epoch += 1
        for trial in "abc":
            writer.add_epoch(trial, {"model": "m"}, _result(epoch, 1.0 / epoch, 1.0, epoch / 10_000))
        writer.flush()
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_read_while_it_is_written_is_one_consistent_snapshot(tmp_path):
    """Trials and epochs are two files: a reader between the writer's two renames would
    pair new epochs with old trials. load_run re-reads until both come from one flush."""
    import multiprocessing

    stop = multiprocessing.get_context("spawn").Event()
    writer = multiprocessing.get_context("spawn").Process(target=_flush_forever, args=(tmp_path, stop))
    writer.start()
    try:
        while not store.has_results(tmp_path):
            time.sleep(0.01)
        reads = [store.load_run(tmp_path) for _ in range(200)]
    finally:
        stop.set()
        writer.join(10)
    epoch_counts = set()
    for run in reads:
        per_trial = run.epochs.groupby("trial_id").epoch.max()
        assert (run.trials.set_index("trial_id").epochs == per_trial).all()
        assert (run.trials.set_index("trial_id").best_val_acc == run.epochs.groupby("trial_id").val_acc.max()).all()
        epoch_counts.add(int(per_trial.max()))
    assert len(epoch_counts) > 10  # the reads really did overlap many flushes


def test_flushes_recompute_only_changed_trials_and_match_a_full_summary(tmp_path, monkeypatch):
    """The writer keeps each trial's summary row until the trial changes; after any mix of
    epochs, statuses, retries, stale rows, a new config key and an interrupt, what it writes
    equals summarizing everything from scratch."""
    writer = RunWriter(tmp_path, max_epochs=3, config_keys=["model", "lr"])
    summarized, calls = [], []
    real = trial_summary.summary_row

    def counting(trial, history, config_columns, max_epochs):
        calls.append(trial["trial_id"])
        return real(trial, history, config_columns, max_epochs)

    def flush():
        calls.clear()
        writer.flush()
        if calls:
            summarized.append(sorted(calls))

    monkeypatch.setattr(trial_summary, "summary_row", counting)

    config = {"model": "iaro1", "lr": 0.01}
    for trial in "abcd":
        writer.set_status(trial, {**config, "lr": 0.01 * (ord(trial) - 96)}, "PENDING")
    flush()
    assert summarized == [list("abcd")]
    writer.add_epoch("a", config, _result(1, 1.0, 0.9, 0.6))
    writer.add_epoch("b", {**config, "lr": 0.02}, _result(1, 1.0, 0.9, 0.5))
    flush()
    assert summarized[-1] == ["a", "b"]
    writer.flush()  # nothing changed: nothing recomputed
    assert len(summarized) == 2
    writer.add_epoch("a", config, _result(2, 0.8, 0.8, 0.7))
    writer.add_epoch("a", config, _result(3, 0.7, 0.8, 0.65))
    writer.set_status("a", config, "TERMINATED")
    writer.add_retry("b", {**config, "lr": 0.02})
    writer.add_epoch("b", {**config, "lr": 0.02}, _result(2, 0.9, 0.9, 0.55))
    writer.add_epoch("b", {**config, "lr": 0.02}, _result(1, 0.95, 0.9, 0.52))  # back at an older checkpoint
    writer.add_epoch("c", {**config, "lr": 0.03, "momentum": 0.9}, _result(1, 1.1, 1.0, 0.4))  # a new key
    writer.mark_interrupted()
    flush()
    assert summarized[-1] == list("abc")  # a new column rewrites every part, but only changed rows are recomputed
    writer.add_epoch("d", {**config, "lr": 0.04}, _result(1, 1.2, 1.1, 0.3))
    writer.set_status("c", {**config, "lr": 0.03, "momentum": 0.9}, "ERROR")
    flush()
    assert summarized[-1] == ["c", "d"]
    cached = store.read_trials(tmp_path)
    writer._summaries.clear()  # from scratch (a finished trial's rows read back from its parts)
    writer._changed.update("abcd")
    flush()
    assert summarized[-1] == list("abcd")
    from_scratch = store.read_trials(tmp_path)
    pd.testing.assert_frame_equal(cached, from_scratch)
    # ... and equals the pandas path that readers use, from the written files alone
    written_epochs = store.read_epochs(tmp_path)
    state = from_scratch[["trial_id", "status", "retries", "model", "lr", "momentum", *columns.TRIAL_FACTS]]
    pd.testing.assert_frame_equal(trial_summary.summarize_trials(written_epochs, state, 3), from_scratch,
                                  check_dtype=False)
    assert list(from_scratch["status"]) == ["TERMINATED", columns.INTERRUPTED, "ERROR", "RUNNING"]
    assert list(from_scratch["epochs"]) == [3, 1, 1, 1]


def test_append_only_parts_stay_unique_few_and_readable_by_plain_readers(tmp_path):
    """Hundreds of flushes with retried epochs, trials sent back to older checkpoints and a
    config value of a new type: every read equals a reference dict, the folder holds a few
    dozen parts at most, and pandas reads each folder as the same table."""
    import random

    rng = random.Random(0)
    writer = RunWriter(tmp_path, max_epochs=100, config_keys=["model", "lr"], flush_interval_s=0)
    expected, latest = {}, {}
    for step in range(400):
        trial = f"t{rng.randrange(40):03d}"
        config = {"model": "m", "lr": 1 if trial == "t000" and step < 200 else 0.5}  # t000: int, then float
        epoch = latest.get(trial, 0) + 1
        if rng.random() < 0.1 and latest.get(trial, 0) > 2:
            epoch = rng.randrange(1, latest[trial])  # a retry back at an older checkpoint
            expected = {k: v for k, v in expected.items() if not (k[0] == trial and k[1] > epoch)}
        latest[trial] = epoch
        val_acc = rng.random()
        expected[(trial, epoch)] = val_acc
        writer.add_epoch(trial, config, _result(epoch, 1.0, 1.0, val_acc))
        writer.flush()
        parts = list((tmp_path / store.EPOCHS_FILE).glob("*.parquet"))
        assert len(parts) < 3 * COMPACT_FANOUT
    epochs = store.read_epochs(tmp_path)
    assert dict(zip(zip(epochs.trial_id, epochs.epoch), epochs.val_acc)) == expected
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert epochs.lr.dtype == "float64" and epochs.set_index("trial_id").lr.loc["t000"].eq(0.5).any()
    plain = pd.read_parquet(tmp_path / store.EPOCHS_FILE).sort_values(["trial_id", "epoch"], ignore_index=True)
    pd.testing.assert_frame_equal(plain, epochs, check_dtype=False)
    trials = store.read_trials(tmp_path).set_index("trial_id")
    assert (trials.epochs == epochs.groupby("trial_id").size()).all()
    assert len(pd.read_parquet(tmp_path / store.TRIALS_FILE)) == len(latest)

    writer.compact()  # the search's end: one part, sorted
    assert [p.name for p in (tmp_path / store.EPOCHS_FILE).iterdir()] == ["part-%06d.parquet" % (writer._next_part - 1)]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / store.EPOCHS_FILE), epochs, check_dtype=False)

    resumed = RunWriter(tmp_path, max_epochs=100, config_keys=["model", "lr"])
    resumed.load()
    trial = next(iter(latest))
    resumed.add_epoch(trial, {"model": "m", "lr": 0.5}, _result(1, 0.1, 0.1, 0.99))  # back at epoch 1
    resumed.flush()
    again = store.read_epochs(tmp_path)
    assert again[again.trial_id == trial].epoch.tolist() == [1]
    assert again[again.trial_id == trial].val_acc.tolist() == [0.99]
    assert len(again) == len(epochs) - latest[trial] + 1


def test_a_run_of_the_one_file_layout_is_read_and_continued(tmp_path):
    """Runs written before part files keep working: read as they are, and a resumed
    search's first flush writes them as folders."""
    epochs = pd.DataFrame([{"trial_id": "a", **_result(1, 1.0, 1.0, 0.5), "model": "m", "lr": 0.1}])
    state = pd.DataFrame({"trial_id": ["a"], "status": ["INTERRUPTED"], "retries": [0], "model": ["m"], "lr": [0.1],
                          **{k: [None] for k in columns.TRIAL_FACTS}})
    trials = trial_summary.summarize_trials(epochs[["trial_id", "epoch", *columns.EPOCH_METRICS]], state, 3)
    store.write_parquet(epochs, tmp_path / store.EPOCHS_FILE, "g1")
    store.write_parquet(trials, tmp_path / store.TRIALS_FILE, "g1")
    assert store.load_run(tmp_path).trials.best_val_acc.tolist() == [0.5]
    writer = RunWriter(tmp_path, max_epochs=3, config_keys=["model", "lr"])
    writer.load()
    writer.add_epoch("a", {"model": "m", "lr": 0.1}, _result(2, 0.5, 0.5, 0.7))
    writer.flush()
    assert (tmp_path / store.EPOCHS_FILE).is_dir() and (tmp_path / store.TRIALS_FILE).is_dir()
    run = store.load_run(tmp_path)
    assert run.epochs.epoch.tolist() == [1, 2] and run.trials.best_val_acc.tolist() == [0.7]


def test_a_config_key_that_changes_type_is_rewritten_as_one_column(tmp_path):
    """An int then a string under one key (a study's own choice): every part and bucket is
    written again with a text column, so a plain reader of the folder sees one schema."""
    writer = RunWriter(tmp_path, max_epochs=2, config_keys=["model", "width"])
    writer.add_epoch("a", {"model": "m", "width": 64}, _result(1, 1.0, 1.0, 0.5))
    writer.flush()
    writer.add_epoch("b", {"model": "m", "width": "wide"}, _result(1, 1.0, 1.0, 0.6))
    writer.flush()
    for table in (pd.read_parquet(tmp_path / store.TRIALS_FILE), pd.read_parquet(tmp_path / store.EPOCHS_FILE)):
        assert sorted(table.width) == ["64", "wide"]
    assert store.read_trials(tmp_path).set_index("trial_id").width.to_dict() == {"a": "64", "b": "wide"}


def test_tunefm_compact_merges_a_killed_searchs_parts(tmp_path):
    """A search merges its epoch parts when it ends; one killed leaves them for `tunefm compact`."""
    import json
    import os

    from click.testing import CliRunner

    from tunefm.cli import main

    writer = RunWriter(tmp_path, max_epochs=5, config_keys=["model"])
    for epoch in range(1, 6):
        for trial in "ab":
            writer.add_epoch(trial, {"model": "m"}, _result(epoch, 1.0, 1.0, 0.1 * epoch))
        writer.flush()
    store.write_json({"status": "running", "pid": os.getpid(), "host": __import__("socket").gethostname(),
                      "study": {"max_epochs": 5}}, tmp_path / store.RUN_FILE)
    busy = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert busy.exit_code == 1 and busy.output.startswith(f"Error: run {tmp_path} is still running (process ")
    store.write_json({"status": "interrupted", "study": {"max_epochs": 5}}, tmp_path / store.RUN_FILE)
    before = store.load_run(tmp_path)
    done = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert done.exit_code == 0 and done.output == f"{tmp_path}: 5 epoch part file(s) -> 1\n", done.output
    after = store.load_run(tmp_path)
    pd.testing.assert_frame_equal(after.epochs, before.epochs)
    pd.testing.assert_frame_equal(after.trials, before.trials)
    assert len(json.loads((tmp_path / "parts.json").read_text())["tables"]["epochs"]) == 1
