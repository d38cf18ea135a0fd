"""Fusion judged on the whole search: the estimate `--fuse auto` decides by, the coordinator that
spreads a study over the slots, and an executor whose first round waits for members on their way."""

from __future__ import annotations

import threading
import time

import pytest

from tunefm.engine import fusion_cost
from tunefm.engine.fusion_cost import ShapeWork, StartCosts
from tunefm.tune import coordinator

COSTS = StartCosts(member_s=1.7, trainer_s=2.5)  # as measured on this project's 2-core machine
# The study: 16 iaro1 trials at batch 8, 2 epochs of 24,000 images; calibrated here.
TINY_NETS = ShapeWork(trials=16, samples=16 * 48_000, solo_rate=8_870, group_rates={2: 14_700, 4: 18_300, 8: 17_510})


def test_alone_is_the_work_spread_over_the_slots_plus_one_process_per_slot():
    alone = fusion_cost.seconds_alone([TINY_NETS], slots=2, cores=2, costs=COSTS)
    assert alone == pytest.approx(16 * 48_000 / 8_870 / 2 + 2 * (1.7 + 2.5) / 2)


def test_a_fused_search_pays_a_process_per_member_running_at_once():
    four, eight = (fusion_cost.seconds_fused([TINY_NETS], 2, 2, COSTS, size) for size in (4, 8))
    assert four == pytest.approx(16 * 48_000 / 18_300 / 2 + (8 * 1.7 + 2 * 2.5) / 2)
    assert eight == pytest.approx(16 * 48_000 / 17_510 / 2 + (16 * 1.7 + 2 * 2.5) / 2)
    best = fusion_cost.best([TINY_NETS], slots=2, cores=2, costs=COSTS, largest=16)
    assert best.group_size == 4 and best.speedup > 1.2  # 8 per slot trains no faster and starts 8 more


def test_a_short_study_is_not_worth_its_member_processes():
    short = ShapeWork(trials=16, samples=16 * 3_000, solo_rate=8_870, group_rates={4: 18_300, 8: 17_510})
    best = fusion_cost.best([short], slots=2, cores=2, costs=COSTS, largest=16)
    assert best.group_size == 1 and best.speedup == 1.0
    assert fusion_cost.estimate([short], 2, 2, COSTS, 4).speedup < 1.0  # fusing would make it slower


def test_a_shape_spreads_over_the_slots_before_it_stacks():
    """8 trials on 4 slots are 2 per slot, at the rate of a group of 2, whatever the group size."""
    shape = ShapeWork(trials=8, samples=8 * 48_000, solo_rate=1_000, group_rates={2: 1_500, 8: 4_000})
    assert fusion_cost.seconds_fused([shape], 4, 4, COSTS, 8) == pytest.approx(
        8 * 48_000 / 1_500 / 4 + (8 * 1.7 + 4 * 2.5) / 4)
    assert shape.rate(1) == 1_000 and shape.rate(3) == 1_500 and shape.rate(16) == 4_000


def test_shapes_without_gains_train_alone_in_both():
    gainless = ShapeWork(trials=4, samples=4 * 10_000, solo_rate=2_000)
    both, one = (fusion_cost.estimate(shapes, 2, 2, COSTS, 4) for shapes in ([TINY_NETS, gainless], [TINY_NETS]))
    assert both.seconds_alone - both.seconds_fused == pytest.approx(one.seconds_alone - one.seconds_fused)
    assert both.seconds_alone == pytest.approx(one.seconds_alone + 4 * 10_000 / 2_000 / 2)


def test_the_coordinator_spreads_trials_over_the_slots_and_keeps_shapes_together(ray_session, monkeypatch):
    """16 trials on a node of 2 CPU slots: 8 per slot; where loads tie, a trial joins its shape."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    started = []
    monkeypatch.setattr(coordinator.Coordinator, "_start", lambda self, key: started.append(key) or key)
    monkeypatch.setattr(coordinator.Coordinator, "_alive", lambda self, key: True)
    coord = coordinator.Coordinator([None], "t", 1, "auto", "on", 8, 2, 1.0)
    small = {"model": "iaro1", "batch_size": 8}
    for i in range(16):
        coord.executor_for(f"t{i}", {**small, "lr": i / 100}, node, [])
    assert sorted(len(m) for m in coord.members.values()) == [8, 8] and len(started) == 2
    big = {"model": "iaro2", "batch_size": 8}
    coord.executor_for("big0", {**big, "lr": 0.1}, node, [])  # ties broken by slot: slot 0
    coord.executor_for("x", {**small, "lr": 0.5}, node, [])  # the other slot, the less loaded
    coord.executor_for("big1", {**big, "lr": 0.2}, node, [])  # loads tie: its shape's slot
    assert coord.assigned["big1"] == coord.assigned["big0"] != coord.assigned["x"]
    assert coord.executor_for("t3", small, node, []) == coord.assigned["t3"]  # asked again: the same one


def test_the_first_round_waits_for_members_on_their_way(data_dir):
    """A member that asks at once does not train alone while the others join a moment later."""
    import numpy as np

    from tunefm.engine import data
    from tunefm.tune.executor import Executor

    splits = data.load(data_dir, train_size=256, val_size=64, test_size=10)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    ex = Executor(arrays, "cpu", loop="plain", fuse="on", capacity=4, max_epochs=1, settle_s=1.5)
    config = {"model": "iaro1", "batch_size": 32}
    results = {}
    try:
        ex.join("a", {**config, "lr": 0.01})
        first = threading.Thread(target=lambda: results.__setitem__("a", ex.next_epoch("a")))
        first.start()
        time.sleep(0.5)  # the next trial's process is still starting
        ex.join("b", {**config, "lr": 0.02})
        results["b"] = ex.next_epoch("b")
        first.join(timeout=60)
    finally:
        ex.stop()
    assert [results[t][2]["group_size"] for t in "ab"] == [2, 2]
    assert np.isfinite(results["a"][0]["train_loss"])


def test_an_executor_measures_and_makes_no_group_larger_than_a_shape_can_fill(data_dir, monkeypatch):
    """fourfam has 28 shapes of 4 trials: an executor of capacity 16 measures groups of 2 and 4
    for them, not 8 and 16 (the slowest to measure); a shape the grid does not count (a
    drawing searcher) may fill the capacity."""
    from tunefm.engine import calibrate, data, fused
    from tunefm.tune.executor import Executor

    splits = data.load(data_dir, train_size=64, val_size=32, test_size=10)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    asked = []
    monkeypatch.setattr(calibrate, "fusion_plan", lambda config, device, threads=None, largest=16: (
        asked.append((config["batch_size"], largest)) or calibrate.FusionPlan(largest, "plain", 1.0, 1.0)))
    four = {"model": "iaro1", "batch_size": 32}
    ex = Executor(arrays, "cpu", loop="auto", fuse="on", capacity=16, max_epochs=200,
                  shape_trials={fused.shape_key(four): 4})
    try:
        assert ex.largest_group(four) == 4 and ex.largest_group({**four, "batch_size": 64}) == 16
        ex.join("a", {**four, "lr": 0.01})
        ex.join("b", {**four, "batch_size": 64, "lr": 0.01})
        with ex._changed:
            ex._place(list(ex.members.values()))
    finally:
        ex.stop()
    assert sorted(asked) == [(32, 4), (64, 16)]
    assert [len(g) for g in ex.groups] == [1, 1]


def test_auto_decides_on_the_whole_study_from_measured_figures(tmp_path, monkeypatch):
    """What `--fuse auto` does with the calibrated figures of the issue's study (a group of 4
    trains 2.06x one trial, 8 trains 1.97x; a Tune process costs 1.7 CPU-seconds to start):
    fuse 4 per slot for 2 epochs of 24,000 images, and not at all for one epoch of 3,000."""
    import json
    import sys

    import torch

    from tunefm.engine import calibrate, devices
    from tunefm.tune import placement

    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path))
    config = {"model": "iaro1", "batch_size": 8}
    figures = {"solo": {"plain": 6_000.0, "channels_last": 5_000.0, "native_conv": 8_870.0},
               "fused": {str(size): {"native_conv": rate, calibrate.REFERENCE: 8_870.0}
                         for size, rate in ((2, 14_700.0), (4, 18_300.0), (8, 17_510.0), (16, 16_000.0))}}
    with calibrate.locked_cache() as contents:
        contents[calibrate.machine_key(torch.device("cpu"), 1)] = {calibrate.shape_id(config): figures}
    key = f"{devices.cpu_name()} | {sys.executable} | torch {torch.__version__}"
    (tmp_path / calibrate.STARTUP_FILE).write_text(json.dumps({key: {"member_s": 1.7, "trainer_s": 2.5}}))
    monkeypatch.setattr(calibrate, "measure_solo", lambda *a: pytest.fail("measured again"))
    monkeypatch.setattr(calibrate, "measure_fused", lambda *a: pytest.fail("measured again"))
    configs = [{**config, "lr": lr, "momentum": m} for lr in (0.01, 0.005, 0.001, 0.0005) for m in (0, 0.5, 0.9, 0.95)]
    long = placement.decide("auto", configs, False, 1, None, train_images=24_000, max_epochs=2, slots=2, cores=2)
    assert long.fuse and long.capacity == 4 and "estimated 1." in long.reason and "4 per slot" in long.reason
    short = placement.decide("auto", configs, False, 1, None, train_images=3_000, max_epochs=1, slots=2, cores=2)
    assert not short.fuse and short.capacity == 1 and "auto fuses from 1.2x" in short.reason
    # --fuse on fuses regardless, at the group size estimated fastest.
    forced = placement.decide("on", configs, False, 1, None, train_images=3_000, max_epochs=1, slots=2, cores=2)
    assert forced.fuse and forced.capacity == 2 and "estimated fastest" in forced.reason
