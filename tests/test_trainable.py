"""The training loop without Ray: determinism, exact continuation from a checkpoint, devices."""

import pytest
import torch

from tunefm import data, trainable

CONFIG = {"model": "iaro1", "lr": 0.05, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
          "weight_decay": 1e-4, "seed": 3}


@pytest.fixture(scope="module")
def arrays(data_dir):
    splits = data.load(data_dir, train_size=600, val_size=300)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


def curve(config, arrays, epochs, state=None):
    torch.set_num_threads(1)
    return [m for m, _ in trainable.fit(config, arrays, epochs, torch.device("cpu"), state)]


def metrics_only(rows):
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in rows]


def test_reports_every_epoch_and_learns(arrays):
    rows = curve(CONFIG, arrays, 3)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert set(row) >= {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s"}
        assert 0 <= row["val_acc"] <= 1 and row["epoch_time_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1


def test_same_seed_same_curve_other_seed_other_curve(arrays):
    first = metrics_only(curve(CONFIG, arrays, 2))
    assert metrics_only(curve(CONFIG, arrays, 2)) == first
    assert metrics_only(curve({**CONFIG, "seed": 4}, arrays, 2)) != first


def test_checkpoint_continues_bit_for_bit(arrays, tmp_path):
    uninterrupted = metrics_only(curve(CONFIG, arrays, 3))
    states = trainable.fit(CONFIG, arrays, 3, torch.device("cpu"))
    _, state = next(states)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(12345)  # disturb global RNG: the checkpoint must restore it
    restored = trainable.init_state({**CONFIG, "seed": 99}, torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert restored.epoch == 1
    resumed = metrics_only(curve(CONFIG, arrays, 3, restored))
    assert resumed == uninterrupted[1:]


def test_adam_optimizer_trains(arrays):
    rows = curve({**CONFIG, "optimizer": "adam", "lr": 1e-3}, arrays, 2)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_device_choice():
    assert trainable.pick_device([])[0].type == "cpu"
    device, why = trainable.pick_device(["0"])
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type == "cpu" and "CUDA is not available" in why


def test_to_tensors_normalizes(arrays):
    x, y = trainable.to_tensors(arrays["train_x"], arrays["train_y"], torch.device("cpu"))
    assert x.shape == (600, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2
