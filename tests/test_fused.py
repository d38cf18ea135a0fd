"""Fused trial groups without Ray: every member's curve equals its solo curve (CPU, float32
rounding), members move in and out of a group through the solo checkpoint format, and the
grouped forward is the stacked models' forward."""

import pytest
import torch

from tunefm.engine import data, fused, models, solo, training

CPU = torch.device("cpu")
TOLERANCE = 1e-5  # relative, per epoch, on train and val loss


@pytest.fixture(scope="module")
def arrays(data_dir):
    splits = data.load(data_dir, train_size=256, val_size=128)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


@pytest.fixture(scope="module")
def tensors(arrays):
    return (*training.to_tensors(arrays["train_x"], arrays["train_y"], CPU),
            *training.to_tensors(arrays["val_x"], arrays["val_y"], CPU))


def solo_curve(config, arrays, epochs):
    torch.set_num_threads(1)
    return [(m["train_loss"], m["train_acc"], m["val_loss"], m["val_acc"])
            for m, _ in solo.fit(config, arrays, epochs, CPU, loop="plain")]


def group_curves(configs, tensors, epochs):
    x, y, val_x, val_y = tensors
    group = fused.FusedGroup(CPU)
    for config in configs:
        group.add(config)
    curves = [[] for _ in configs]
    for _ in range(epochs):
        for curve, (train_loss, train_acc), (val_loss, val_acc) in zip(curves, group.train_epoch(x, y),
                                                                        group.evaluate(val_x, val_y)):
            curve.append((train_loss, train_acc, val_loss, val_acc))
    return curves, group


def assert_same_curve(fused_curve, solo):
    for (ft, fta, fv, fva), (st, sta, sv, sva) in zip(fused_curve, solo, strict=True):
        assert ft == pytest.approx(st, rel=TOLERANCE) and fv == pytest.approx(sv, rel=TOLERANCE)
        assert abs(fta - sta) <= 1 / 256 and abs(fva - sva) <= 1 / 128  # at most one image flips


BASE = {"model": "iaro1", "batch_size": 32}
CASES = {
    "sgd, momentum, weight decay": [{**BASE, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "seed": 1},
                                    {**BASE, "lr": 0.01, "seed": 2},
                                    {**BASE, "lr": 0.1, "momentum": 0.5, "seed": 3, "init": "xavier_normal"}],
    "adam, weight decay": [{**BASE, "optimizer": "adam", "lr": 1e-3, "seed": 1},
                           {**BASE, "optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-3, "seed": 2}],
    "lr decay": [{**BASE, "lr": 0.05, "lr_decay": 0.99, "seed": 1}, {**BASE, "lr": 0.05, "seed": 1}],
    "augmentation": [{**BASE, "lr": 0.02, "augment": True, "seed": 4}, {**BASE, "lr": 0.02, "seed": 4}],
    "dropout": [{"model": "kahn", "dropout": 0.5, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "seed": s}
                for s in (1, 2)],
    "batch norm, sigmoid": [{"model": "convnet1", "batch_norm": True, "batch_size": 64, "lr": 0.01, "seed": s,
                             "output": "sigmoid"} for s in (1, 2)],
}


@pytest.mark.parametrize("case", CASES)
def test_each_member_trains_as_it_would_alone(case, arrays, tensors):
    configs = CASES[case]
    curves, _ = group_curves(configs, tensors, 2)
    for config, curve in zip(configs, curves):
        assert_same_curve(curve, solo_curve(config, arrays, 2))
    assert curves[0] != curves[1]  # the members really are different trials


def test_members_join_and_leave_through_solo_checkpoints(arrays, tensors):
    """A trial trained alone for an epoch joins a group, leaves it after another, and
    continues alone: the same curve as training alone throughout."""
    x, y, val_x, val_y = tensors
    config = {**BASE, "lr": 0.05, "momentum": 0.9, "lr_decay": 0.995, "seed": 7}
    alone = solo_curve(config, arrays, 3)

    first = solo.fit(config, arrays, 3, CPU, loop="plain")
    _, state = next(first)
    group = fused.FusedGroup(CPU)
    group.add({**BASE, "lr": 0.01, "seed": 8})  # a companion, trained from scratch
    slot = group.add(config, state.state_dict())
    assert group.epoch(slot) == 1
    (train_loss, _), = group.train_epoch(x, y)[slot:slot + 1]
    (val_loss, _), = group.evaluate(val_x, val_y)[slot:slot + 1]
    assert train_loss == pytest.approx(alone[1][0], rel=TOLERANCE)
    assert val_loss == pytest.approx(alone[1][2], rel=TOLERANCE)

    checkpoint = group.state_dict(slot)
    assert checkpoint["epoch"] == 2 and checkpoint["optimizer"]["state"]  # momentum buffers travel
    group.remove(slot)
    assert len(group) == 1
    restored = training.init_state(config, CPU)
    restored.load_state_dict(checkpoint)
    (last, _), = [(m, s) for m, s in solo.fit(config, arrays, 3, CPU, restored)]
    assert last["epoch"] == 3
    assert last["val_loss"] == pytest.approx(alone[2][2], rel=TOLERANCE)


def test_a_group_accepts_only_one_shape():
    group = fused.FusedGroup(CPU)
    group.add({**BASE, "lr": 0.1})
    group.add({**BASE, "lr": 0.2, "momentum": 0.9, "seed": 3, "augment": True})  # per-member keys differ: fine
    for other in ({**BASE, "batch_size": 64, "lr": 0.1}, {**BASE, "optimizer": "adam", "lr": 0.1},
                  {"model": "iaro2", "batch_size": 32, "lr": 0.1}, {**BASE, "output": "sigmoid", "lr": 0.1}):
        with pytest.raises(ValueError, match="shape"):
            group.add(other)
    assert fused.shape_key({"model": "kahn", "batch_size": 8, "lr": 1}) == \
        fused.shape_key({"model": "kahn", "dropout": 0.0, "batch_size": 8, "lr": 2, "seed": 5})


@pytest.mark.parametrize("name", models.names())
def test_grouped_forward_is_every_members_own_forward(name):
    """For every registered model: the grouped forward of 3 stacked members equals each
    member's own module on its own images, in training and in evaluation mode."""
    torch.manual_seed(0)
    members = [models.build(name).eval() for _ in range(3)]
    forward = fused.GroupedForward(members[0])
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in members])
              for n, _ in members[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in members]) for n, _ in members[0].named_buffers()}
    x = torch.randn(3, 4, 1, 28, 28)
    expected = torch.stack([m(xi) for m, xi in zip(members, x)])
    with torch.no_grad():
        assert torch.allclose(forward(params, buffers, {}, x, 3, training=False), expected, rtol=1e-4, atol=1e-5)
        shared = forward(params, buffers, {}, x[0], 3, training=False)  # every member on the same images
    assert torch.allclose(shared, torch.stack([m(x[0]) for m in members]), rtol=1e-4, atol=1e-5)


def test_a_model_without_a_grouped_form_is_refused():
    class Residual(torch.nn.Module):  # a container whose forward is not a chain
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.ReLU()

        def forward(self, x):
            return x + self.inner(x)

    with pytest.raises(fused.NotFusable, match="Residual is not an nn.Sequential"):
        fused.GroupedForward(torch.nn.Sequential(torch.nn.Flatten(), Residual()))
    with pytest.raises(fused.NotFusable, match="GELU"):
        fused.GroupedForward(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.GELU()))


def test_the_executor_trains_its_members_in_rounds_as_they_would_alone(arrays):
    """The worker behind --fuse, without Ray: two members of one shape each ask for their epochs
    from their own thread (as trial processes do), get their solo curve, checkpoint files in
    the solo format and where they ran; a member that leaves is not waited for."""
    import io
    import threading

    from tunefm.tune.executor import Executor

    configs = {"a": {**BASE, "lr": 0.05, "seed": 1}, "b": {**BASE, "lr": 0.01, "seed": 2},
               "c": {**BASE, "lr": 0.02, "seed": 3}}
    executor = Executor(arrays, "cpu", threads=1, loop="plain", fuse="on", capacity=4, max_epochs=2)
    for trial_id, config in configs.items():
        executor.join(trial_id, config)
    assert executor.leave("c") and not executor.leave("c")  # stopped before its first epoch
    results = {}

    def member(trial_id):
        results[trial_id] = [executor.next_epoch(trial_id) for _ in range(3)]  # the third: None, it is done

    threads = [threading.Thread(target=member, args=(t,)) for t in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    executor.stop()
    assert not any(thread.is_alive() for thread in threads)
    for trial_id in ("a", "b"):
        first, second, done = results[trial_id]
        assert done is None and [first[0]["epoch"], second[0]["epoch"]] == [1, 2]
        curve = [(m["train_loss"], m["train_acc"], m["val_loss"], m["val_acc"]) for m, _, _ in (first, second)]
        assert_same_curve(curve, solo_curve(configs[trial_id], arrays, 2))
        metrics, blob, facts = second
        state = torch.load(io.BytesIO(blob), weights_only=False)
        assert state["epoch"] == 2 and facts["device"] == "cpu" and facts["group_size"] == 2
    assert executor.status()["members"] == []
