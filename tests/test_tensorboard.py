"""TensorBoard's HParams tab (tunefm/tune/tensorboard.py): the experiment at the root names every
config key with its values or range and every metric tag; each trial's folder holds its
session start and end. Read back from the event files themselves."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunefm import study as studies
from tunefm.tune.tensorboard import METRIC_TAGS, TensorBoardWriter


def events(folder: Path) -> list:
    """Every Event in a folder's own event files (TFRecords: u64 length, u32 crc, event, u32 crc)."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at:at + 8])
            found.append(event_pb2.Event.FromString(raw[at + 12:at + 12 + length]))
            at += 12 + length + 4
    return found


def hparams_data(folder: Path, tag: str) -> list:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    return [HParamsPluginData.FromString(value.metadata.plugin_data.content)
            for event in events(folder) for value in event.summary.value if value.tag == tag]


def fake_trial(trial_id: str, config: dict, best: float) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config=config, metric_analysis={"val_acc": {"max": best}})


def test_the_experiment_at_the_root_names_every_key_with_its_values(tmp_path):
    regularize = studies.load("regularize")  # variants: the baseline sets no dropout value of its own
    TensorBoardWriter(tmp_path, regularize)
    [experiment] = [d.experiment for d in hparams_data(tmp_path, "_hparams_/experiment")]
    infos = {info.name: info for info in experiment.hparam_infos}
    assert list(infos) == regularize.config_keys()
    assert sorted(infos["optimizer"].domain_discrete) == ["adam", "sgd"]
    assert sorted(infos["dropout"].domain_discrete) == [0.0, 0.5]
    assert [m.name.tag for m in experiment.metric_infos] == METRIC_TAGS
    TensorBoardWriter(tmp_path, regularize)  # a resume writes no second experiment
    assert len(hparams_data(tmp_path, "_hparams_/experiment")) == 1


def test_a_drawn_space_gives_ranges_and_choices(tmp_path):
    tpe = studies.load("cnn2-tpe")
    TensorBoardWriter(tmp_path, tpe)
    [experiment] = [d.experiment for d in hparams_data(tmp_path, "_hparams_/experiment")]
    infos = {info.name: info for info in experiment.hparam_infos}
    assert (infos["lr"].domain_interval.min_value, infos["lr"].domain_interval.max_value) == (1e-5, 1e-2)
    assert sorted(infos["batch_size"].domain_discrete) == [32.0, 64.0, 128.0, 256.0]
    assert infos["model"].domain_discrete == ["cnn2"]


def test_each_trial_holds_its_session_start_and_end(tmp_path):
    writer = TensorBoardWriter(tmp_path, studies.load("regularize"))
    done = fake_trial("a", {"model": "kahn", "lr": 0.001, "optimizer": "sgd", "dropout": 0.0}, 0.8)
    failed = fake_trial("b", {"model": "kahn", "lr": 1e-4, "optimizer": "adam", "dropout": 0.5}, 0.4)
    running = fake_trial("c", {"model": "kahn", "lr": 1e-4, "optimizer": "adam", "dropout": 0.5}, 0.3)
    for trial in (done, failed, running):
        writer.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.5, "train_loss": 1.0})
    writer.on_trial_complete(0, [], done)
    writer.on_trial_error(0, [], failed)
    writer.on_experiment_end([done, failed, running])  # the search was interrupted: c goes on later
    [start] = [d.session_start_info for d in hparams_data(tmp_path / "a", "_hparams_/session_start_info")]
    assert start.hparams["optimizer"].string_value == "sgd" and start.hparams["lr"].number_value == 0.001
    statuses = {t: [d.session_end_info.status for d in hparams_data(tmp_path / t, "_hparams_/session_end_info")]
                for t in "abc"}
    from tensorboardX.proto.api_pb2 import Status

    assert statuses == {"a": [Status.Value("STATUS_SUCCESS")], "b": [Status.Value("STATUS_FAILURE")], "c": []}
    best = [v.simple_value for e in events(tmp_path / "a") for v in e.summary.value if v.tag == "hparam/best_val_acc"]
    assert best == [pytest.approx(0.8)]
