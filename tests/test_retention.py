"""--keep-checkpoints: what a run keeps on disk, and what `tunefm evaluate` says when a checkpoint is
gone (on the README's quick search: test_quick_search.py)."""

import json
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from tunefm.run import checkpoints, store
from tunefm.tune import retention


def on_disk(tune_dir, trial_id):
    """epoch -> size of each checkpoint the trial has on disk."""
    found = checkpoints.listing(pafs.LocalFileSystem(), str(tune_dir / trial_id))
    return {c.epoch: c.size for c in found}


def test_an_ended_trial_keeps_its_best_checkpoint_and_drops_the_latest(tmp_path):
    """The trial-end callback, on checkpoint folders laid out as Tune writes them."""
    tune_dir = tmp_path / "tune"
    for trial_id, epochs in [("a", [2, 3]), ("b", [3])]:
        for epoch in epochs:
            folder = tune_dir / trial_id / f"checkpoint_{epoch:06d}"
            folder.mkdir(parents=True)
            (folder / "state.pt").write_bytes(b"x" * 1000 * epoch)
            (folder / "meta.json").write_text(json.dumps({"epoch": epoch, "val_acc": 0.5}))
    pruning = retention.Pruning(str(tune_dir))
    callback = pruning.callback({"a": 2, "b": 3}.get)
    for trial_id in "ab":
        callback.on_trial_complete(0, [], SimpleNamespace(trial_id=trial_id))
    assert list(on_disk(tune_dir, "a")) == [2] and list(on_disk(tune_dir, "b")) == [3]
    assert pruning.freed.checkpoints == 1 and pruning.freed.bytes == 3000 + len('{"epoch": 3, "val_acc": 0.5}')


@pytest.mark.slow
def test_keep_checkpoints_all_keeps_every_trials_checkpoints(tmp_path, data_dir, ray_session):
    from tunefm.tune.search import run
    from tunefm.tune.settings import SearchSettings

    settings = SearchSettings(space="fourfam", sets=("model=iaro1", "lr=0.01,0.001", "batch_size=256"),
                              max_epochs=2, train_size=512, val_size=256, test_size=256, test_top=1,
                              keep_checkpoints="all", results_dir=str(tmp_path), data_dir=str(data_dir), name="all")
    trials = run(settings, echo=lambda line: None).trials
    assert store.read_json(tmp_path / "all" / store.RUN_FILE)["checkpoints"] == {"policy": "all"}
    for trial in trials.itertuples():
        assert trial.best_epoch in on_disk(tmp_path / "all" / store.TUNE_DIR, trial.trial_id)
        assert trial.epochs in on_disk(tmp_path / "all" / store.TUNE_DIR, trial.trial_id)  # the latest too


def test_a_resumed_trial_takes_its_newest_whole_checkpoint_up_to_its_recorded_epoch(tmp_path):
    """Epochs 1-4 checkpointed; epoch 4's state.pt was cut short (a copy killed midway), and
    the run recorded epochs up to 3. Tune names epoch 1: the trial continues from epoch 3."""
    trial = tmp_path / "t1"
    for epoch in range(1, 5):
        folder = trial / f"checkpoint_{epoch - 1:06d}"
        folder.mkdir(parents=True)
        checkpoints.write(folder, checkpoints.files(bytes([epoch]) * (100 + epoch), epoch, 0.5))
    state = trial / "checkpoint_000003" / checkpoints.STATE_FILE
    state.write_bytes(state.read_bytes()[:50])
    listed = checkpoints.listing(pafs.LocalFileSystem(), str(trial))
    assert [(c.epoch, c.complete) for c in listed] == [(1, True), (2, True), (3, True), (4, False)]
    assert checkpoints.newer_state(str(tmp_path), "t1", 1, {"t1": 4}) == bytes([3]) * 103
    assert checkpoints.newer_state(str(tmp_path), "t1", 1, {"t1": 2}) == bytes([2]) * 102
    assert checkpoints.newer_state(str(tmp_path), "t1", 3, {"t1": 4}) is None  # Tune's is the newest whole one
    assert checkpoints.newer_state(str(tmp_path), "t2", 0, {"t2": 3}) is None  # no folder
    assert checkpoints.newer_state(str(tmp_path), "t1", 0, None) is None  # a new search: Tune's checkpoint stands
