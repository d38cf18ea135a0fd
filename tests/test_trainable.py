"""The training loop without Ray: determinism, exact continuation from a checkpoint, devices."""

import subprocess
import sys

import pytest
import torch

from tunefm.engine import data, solo, training, training_plan

CONFIG = {"model": "iaro1", "lr": 0.05, "batch_size": 32, "optimizer": "sgd", "momentum": 0.9,
          "weight_decay": 1e-4, "seed": 3}


@pytest.fixture(scope="module")
def arrays(data_dir):
    splits = data.load(data_dir, train_size=600, val_size=300)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


def curve(config, arrays, epochs, state=None):
    torch.set_num_threads(1)
    return [m for m, _ in solo.fit(config, arrays, epochs, torch.device("cpu"), state)]


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
    states = solo.fit(CONFIG, arrays, 3, torch.device("cpu"))
    _, state = next(states)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(12345)  # disturb global RNG: the checkpoint must restore it
    restored = training.init_state({**CONFIG, "seed": 99}, torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert restored.epoch == 1
    resumed = metrics_only(curve(CONFIG, arrays, 3, restored))
    assert resumed == uninterrupted[1:]


def test_adam_optimizer_trains(arrays):
    rows = curve({**CONFIG, "optimizer": "adam", "lr": 1e-3}, arrays, 2)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_device_choice():
    assert training_plan.trial_device([]).type == "cpu"  # no GPU from Ray: CPU even where CUDA exists
    # A GPU from Ray: CUDA where it exists, else the CPU fallback
    assert training_plan.trial_device(["0"]).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_to_tensors_normalizes(arrays):
    x, y = training.to_tensors(arrays["train_x"], arrays["train_y"], torch.device("cpu"))
    assert x.shape == (600, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2


def test_augment_crops_and_flips_each_image_by_itself(arrays):
    x, _ = training.to_tensors(arrays["train_x"][:64], arrays["train_y"][:64], torch.device("cpu"))
    def augmented(seed):
        return training.augment_batch(x, *training.crop_indices(len(x), torch.Generator().manual_seed(seed),
                                                                  torch.device("cpu")))

    out = augmented(0)
    assert out.shape == x.shape
    assert torch.equal(out, augmented(0))  # seeded
    pad = training.CROP_PAD
    padded = torch.nn.functional.pad(x, (pad,) * 4, value=training.BACKGROUND)
    flips = 0
    for image, result in zip(padded[:, 0], out[:, 0]):
        # Every output image is one 28x28 window of its padded input, maybe mirrored.
        windows = [image[t:t + 28, l:l + 28] for t in range(2 * pad + 1) for l in range(2 * pad + 1)]
        plain = any(torch.equal(result, w) for w in windows)
        mirrored = any(torch.equal(result, w.flip(1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54  # about half of 64 are flipped
    assert not torch.equal(out, x)


def test_augmented_training_differs_and_learns(arrays):
    plain = curve(CONFIG, arrays, 2)
    augmented = curve({**CONFIG, "augment": True}, arrays, 2)
    assert metrics_only(augmented) != metrics_only(plain)
    assert metrics_only(curve({**CONFIG, "augment": True}, arrays, 2)) == metrics_only(augmented)
    assert augmented[-1]["val_acc"] > 0.3


def test_sigmoid_output_is_binary_cross_entropy_on_one_hot_targets(arrays):
    logits = torch.randn(5, 10)
    y = torch.tensor([0, 1, 2, 3, 9])
    expected = torch.nn.BCELoss()(torch.sigmoid(logits), torch.nn.functional.one_hot(y, 10).float())
    assert training.sigmoid_loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert training.sigmoid_loss(logits, y, reduction="sum").item() == pytest.approx(5 * expected.item(), rel=1e-5)
    rows = curve({**CONFIG, "output": "sigmoid", "optimizer": "adam", "lr": 1e-3}, arrays, 2)
    assert rows[0]["train_loss"] < 0.5  # per-class BCE starts near ln 2 = 0.69, not cross-entropy's ln 10
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["val_acc"] > 0.3


def test_lr_decays_every_step_and_resumes(arrays, tmp_path):
    config = {**CONFIG, "lr_decay": 0.99}
    state = training.init_state(config, torch.device("cpu"))
    fitted = solo.fit(config, arrays, 3, torch.device("cpu"), state)
    next(fitted)
    steps = -(-600 // config["batch_size"])  # batches per epoch
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(CONFIG["lr"] * 0.99 ** steps)
    torch.save(state.state_dict(), tmp_path / "state.pt")
    restored = training.init_state(config, torch.device("cpu"))
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(CONFIG["lr"] * 0.99 ** steps)
    assert metrics_only(curve(config, arrays, 3, restored)) == metrics_only(curve(config, arrays, 3))[1:]
    assert training.build_scheduler(CONFIG, state.optimizer) is None  # no decay: constant lr


def test_a_trials_own_max_epochs_stops_it_early(arrays):
    assert [r["epoch"] for r in curve({**CONFIG, "max_epochs": 2}, arrays, 5)] == [1, 2]
    assert [r["epoch"] for r in curve({**CONFIG, "max_epochs": 9}, arrays, 2)] == [1, 2]


def test_model_options_and_init_reach_the_model():
    model = training.build_model({"model": "twoconv", "conv1_filters": 8, "dense": 64, "init": "kaiming_uniform"})
    assert model[0].out_channels == 8 and model[5].out_features == 64
    assert all((m.bias == 0).all() for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_a_ray_worker_that_trains_loads_neither_pandas_nor_pyarrow():
    """The trainable, the fused executor and what they need of the run's columns (columns.py)
    import no table library: every Ray worker would load it for nothing."""
    code = ("import sys\nimport tunefm.run.columns, tunefm.engine.training, tunefm.tune.executor, tunefm.engine.fused\n"
            "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
