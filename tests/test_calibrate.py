"""Training loops and their calibration: layouts and kernels, measured choices cached per
machine, one measurement when processes race, trials keep their loop, `tunefm bench --calibration`."""

import json
import multiprocessing as mp
import os

import pytest
import torch
from click.testing import CliRunner

from tunefm.cli import main
from tunefm.engine import calibrate, data, loops, solo, training
from tunefm.errors import UserError
from tunefm.tune import placement

CPU = torch.device("cpu")
CONFIG = {"model": "iaro1", "lr": 0.05, "batch_size": 32, "momentum": 0.9, "seed": 3}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(calibrate.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / calibrate.CACHE_FILE


@pytest.fixture(scope="module")
def arrays(data_dir):
    splits = data.load(data_dir, train_size=320, val_size=128)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


def test_loop_names_are_checked_per_device():
    assert loops.check("native_conv", CPU) == "native_conv"
    with pytest.raises(UserError, match="--loop must be one of auto, plain, channels_last, native_conv, "
                                        "captured, got 'fast'"):
        loops.check("fast")
    with pytest.raises(UserError, match="--loop captured does not run on cpu; valid there: auto, plain, "
                                        "channels_last, native_conv"):
        loops.check("captured", CPU)
    assert loops.for_device("captured", CPU) == "plain" and loops.for_device("channels_last", CPU) == "channels_last"


def test_layouts_and_kernels():
    model = loops.place_model(training.build_model({"model": "iaro3"}), "channels_last", CPU)
    weight = model.features[2].weight  # (30, 8, 5, 5)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert loops.place_model(training.build_model({"model": "iaro3"}), "native_conv", CPU).features[2] \
        .weight.is_contiguous()
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError):
        with loops.kernels("native_conv"):
            assert not torch.backends.mkldnn.enabled
            raise RuntimeError("a failing step")
    assert torch.backends.mkldnn.enabled  # restored on the way out of an error too


def test_every_cpu_loop_gives_the_same_curve(arrays):
    torch.set_num_threads(1)
    curves = {loop: [(m["train_loss"], m["val_loss"]) for m, _ in solo.fit(CONFIG, arrays, 2, CPU, loop=loop)]
              for loop in loops.CANDIDATES["cpu"]}
    for loop, curve in curves.items():
        for (train, val), (plain_train, plain_val) in zip(curve, curves["plain"]):
            assert train == pytest.approx(plain_train, rel=1e-5) and val == pytest.approx(plain_val, rel=1e-5), loop


def test_auto_measures_once_per_shape_and_remembers(cache, arrays, monkeypatch):
    rng_before = torch.get_rng_state()
    loop = calibrate.choose_loop(CONFIG, CPU, threads=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # calibration never draws from the trial's streams
    contents = json.loads(cache.read_text())
    [(machine, entries)] = contents.items()
    assert machine == calibrate.machine_key(CPU, 1) and "torch " + torch.__version__ in machine
    entry = entries[calibrate.shape_id(CONFIG)]
    assert set(entry["solo"]) == set(loops.CANDIDATES["cpu"]) and all(r > 0 for r in entry["solo"].values())
    fastest = max(entry["solo"], key=entry["solo"].get)
    assert loop == (fastest if entry["solo"][fastest] >= calibrate.PLAIN_MARGIN * entry["solo"]["plain"] else "plain")
    # Per-member keys do not make another shape; the cache answers without measuring again.
    calls = []
    monkeypatch.setattr(calibrate, "measure_solo", lambda *a: calls.append(a) or {"plain": 1.0})
    assert calibrate.choose_loop({**CONFIG, "lr": 0.5, "seed": 9, "augment": True}, CPU, 1) == loop
    assert not calls
    # A fresh trial with --loop auto trains with that loop; its checkpoint keeps it.
    state = next(solo.fit(CONFIG, arrays, 1, CPU, loop="auto"))[1]
    assert state.loop == loop and state.state_dict()["loop"] == loop
    # Another shape is measured (here: by the spy) and the cache grows.
    assert calibrate.choose_loop({**CONFIG, "batch_size": 64}, CPU, 1) == "plain" and len(calls) == 1


def test_a_resumed_trial_keeps_the_loop_it_started_with(cache, arrays):
    entry_loop = calibrate.choose_loop(CONFIG, CPU, 1)
    other = next(loop for loop in loops.CANDIDATES["cpu"] if loop != entry_loop)
    state = training.init_state(CONFIG, CPU, other)
    saved = state.state_dict()
    assert saved.get("loop", "plain") == other
    assert {k: v for k, v in saved.items() if k != "loop"}.get("loop", "plain") == "plain"  # older checkpoints


def _choose_in_another_process(cache_dir: str, results) -> None:
    os.environ[calibrate.CACHE_ENV] = cache_dir
    torch.set_num_threads(1)
    entry = calibrate.entry_for({"model": "iaro1", "batch_size": 16}, CPU, 1)
    results.put(entry["measured_at"] + json.dumps(entry["solo"], sort_keys=True))


@pytest.mark.slow
def test_racing_processes_share_one_measurement(cache):
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_choose_in_another_process, args=(str(cache.parent), results))
                 for _ in range(2)]
    for p in processes:
        p.start()
    answers = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert answers[0] == answers[1]  # the second waited for the first's figures instead of measuring its own
    assert len(json.loads(cache.read_text())[calibrate.machine_key(CPU, 1)]) == 1


def test_another_loop_must_beat_plain_by_the_margin():
    assert calibrate.best_solo({"solo": {"plain": 100.0, "channels_last": 102.0, "native_conv": 90.0}}) == "plain"
    assert calibrate.best_solo({"solo": {"plain": 100.0, "channels_last": 104.0, "native_conv": 110.0}}) \
        == "native_conv"
    assert calibrate.best_solo({"solo": {"plain": 100.0, "captured": 800.0}}) == "captured"


def test_fusion_plan_takes_the_fastest_size_that_beats_solo_by_the_margin():
    entry = {"solo": {"plain": 100.0, "channels_last": 120.0},
             "fused": {"2": {"plain": 110.0, "native_conv": 125.0}, "4": {"plain": 200.0, "native_conv": 180.0},
                       "8": {"plain": 190.0, "native_conv": 150.0},
                       "16": {calibrate.SKIPPED: "a smaller group was no faster than the one before it"}}}
    plan = calibrate.plan_from(entry, largest=16)
    assert (plan.group_size, plan.variant, plan.samples_per_s) == (4, "plain", 200.0)
    assert plan.speedup == pytest.approx(200 / 120)
    assert calibrate.plan_from(entry, largest=2).group_size == 1  # 125 < 1.25 x 120: not worth a group
    assert calibrate.plan_from(entry, largest=3).variant == "channels_last"
    slow = {"solo": {"plain": 100.0}, "fused": {"2": {"plain": 90.0}}}
    assert calibrate.plan_from(slow, 16).group_size == 1


def test_a_groups_gain_is_over_the_solo_loop_timed_in_the_same_rounds():
    # The machine ran slower while the groups were timed: their rates alone would say fusing
    # loses (90 < 100), the solo loop timed beside them says a group of 4 trains 1.5x.
    entry = {"solo": {"plain": 100.0},
             "fused": {"2": {"plain": 80.0, calibrate.REFERENCE: 60.0},
                       "4": {"plain": 90.0, "native_conv": 80.0, calibrate.REFERENCE: 60.0}}}
    plan = calibrate.plan_from(entry, largest=16)
    assert (plan.group_size, plan.variant) == (4, "plain") and plan.speedup == pytest.approx(1.5)
    assert plan.samples_per_s == pytest.approx(150.0)  # the solo rate times the gain
    assert calibrate.plan_from(entry, largest=2).group_size == 2  # 80 / 60 = 1.33 >= 1.25


def test_fused_groups_are_measured_up_to_the_size_asked(cache):
    plan = calibrate.fusion_plan({"model": "iaro1", "batch_size": 8}, CPU, threads=1, largest=4)
    entry = calibrate.cached()[calibrate.machine_key(CPU, 1)]["iaro1 batch=8 optimizer=sgd output=softmax"]
    assert set(entry["fused"]) == {"2", "4"}
    for figures in entry["fused"].values():
        assert set(figures) == {"plain", "native_conv", calibrate.REFERENCE} or calibrate.SKIPPED in figures
    assert plan.group_size in (1, 2, 4) and plan.solo_samples_per_s == entry["solo"][calibrate.best_solo(entry)]


@pytest.mark.slow
def test_bench_shows_and_refreshes_the_calibration(cache):
    empty = CliRunner().invoke(main, ["bench", "--calibration"])
    assert empty.exit_code == 0 and "nothing measured yet" in empty.output and str(cache) in empty.output
    refreshed = CliRunner().invoke(main, ["bench", "--refresh", "--models", "iaro1", "--batch-sizes", "16",
                                          "--device", "cpu"])
    assert refreshed.exit_code == 0, refreshed.output
    assert "calibrated iaro1 batch=16 optimizer=sgd output=softmax" in refreshed.stderr
    assert "iaro1 batch=16" in refreshed.stdout and "channels_last" in refreshed.stdout
    first = json.loads(cache.read_text())
    again = CliRunner().invoke(main, ["bench", "--refresh", "--models", "iaro1", "--batch-sizes", "16",
                                      "--format", "json"])
    report = json.loads(again.stdout)
    assert report["cache"] == str(cache) and report["machines"] == json.loads(cache.read_text())
    assert first != report["machines"]  # measured again, not read back
    bad = CliRunner().invoke(main, ["bench", "--loop", "fast"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: Invalid value for '--loop': 'fast' is not one of")


def measured(best: str) -> dict:
    """A cache entry as a measurement leaves it, `best` the fastest loop by far."""
    return {"solo": {"plain": 100.0, "channels_last": 100.0, "native_conv": 100.0, best: 150.0}}


def test_a_shape_too_short_to_measure_borrows_the_nearest_batch_size(cache):
    with calibrate.locked_cache() as contents:
        contents[calibrate.machine_key(CPU, 1)] = {
            calibrate.shape_id({"model": "iaro2", "batch_size": 8}): measured("native_conv"),
            calibrate.shape_id({"model": "iaro2", "batch_size": 128}): measured("channels_last")}
    short = 10  # steps: not worth measuring
    assert calibrate.choose_loop({"model": "iaro2", "batch_size": 512}, CPU, 1, steps=short) == "channels_last"
    assert calibrate.choose_loop({"model": "iaro2", "batch_size": 16}, CPU, 1, steps=short) == "native_conv"
    # Another optimizer is another shape; another model has nothing to borrow: PyTorch's defaults.
    assert calibrate.choose_loop({"model": "iaro2", "batch_size": 512, "optimizer": "adam"}, CPU, 1, short) == "plain"
    assert calibrate.choose_loop({"model": "iaro1", "batch_size": 512}, CPU, 1, steps=short) == "plain"
    entries = calibrate.cached()[calibrate.machine_key(CPU, 1)]
    decided = {shape: (e["loop"], e["loop_from"]) for shape, e in entries.items() if "solo" not in e}  # not measured
    assert decided == {"iaro2 batch=512 optimizer=sgd output=softmax": ("channels_last", "borrowed from batch=128"),
                       "iaro2 batch=16 optimizer=sgd output=softmax": ("native_conv", "borrowed from batch=8"),
                       "iaro2 batch=512 optimizer=adam output=softmax": ("plain", "default (too short to measure)"),
                       "iaro1 batch=512 optimizer=sgd output=softmax": ("plain", "default (too short to measure)")}
    # The test evaluation (another thread count, batches of 2048) borrows from any thread count.
    assert calibrate.borrowed_loop({"model": "iaro2", "batch_size": 2048}, CPU, threads=None) \
        == ("channels_last", "borrowed from batch=128")
    assert calibrate.borrowed_loop({"model": "iaro2", "batch_size": 2048}, CPU, threads=2) is None


def test_a_shapes_loop_is_decided_once_whatever_is_measured_later(cache, monkeypatch):
    """Loops agree only to float rounding, so the loop a shape trains in must not follow what
    happens to be measured when a trial starts (issue 43: a search's trials of one shape got
    channels_last and plain, a second search plain, after another test measured a nearer batch
    size meanwhile). The first decision stands, for short and long trials, until a refresh."""
    iaro2 = {"model": "iaro2", "batch_size": 256}
    with calibrate.locked_cache() as contents:
        contents[calibrate.machine_key(CPU, 1)] = {calibrate.shape_id({**iaro2, "batch_size": 32}):
                                                   measured("channels_last")}
    assert calibrate.choose_loop(iaro2, CPU, 1, steps=10) == "channels_last"  # borrowed from batch=32
    with calibrate.locked_cache() as contents:  # another search measures a nearer batch size meanwhile
        contents[calibrate.machine_key(CPU, 1)][calibrate.shape_id({**iaro2, "batch_size": 128})] = measured("plain")
    assert calibrate.borrowed_loop(iaro2, CPU, 1) == ("plain", "borrowed from batch=128")  # what it would borrow now
    monkeypatch.setattr(calibrate, "measure_solo", lambda *a: pytest.fail("a decided shape was measured"))
    assert calibrate.choose_loop(iaro2, CPU, 1, steps=10) == "channels_last"
    assert calibrate.choose_loop(iaro2, CPU, 1, steps=100_000) == "channels_last"  # a long trial: the same
    # A trial that raced the first to decide gets the first decision.
    assert calibrate.record_loop(iaro2, CPU, 1, "native_conv", "borrowed from batch=512") == "channels_last"
    # Fusion's calibration measures the shape later: the figures are kept, the decision stays.
    monkeypatch.setattr(calibrate, "measure_solo", lambda *a: measured("native_conv")["solo"])
    entry = calibrate.entry_for(iaro2, CPU, 1)
    assert "solo" in entry and entry["loop"] == "channels_last" and entry["loop_from"] == "borrowed from batch=32"
    assert calibrate.choose_loop(iaro2, CPU, 1) == "channels_last"
    # `tunefm bench --refresh` measures it again: the measurement decides.
    calibrate.entry_for(iaro2, CPU, 1, refresh=True)
    assert calibrate.choose_loop(iaro2, CPU, 1, steps=10) == "native_conv"
    assert calibrate.cached_entry(iaro2, CPU, 1)["loop_from"] == "measured"
    # The test evaluation's layout is decided once too.
    torch.set_num_threads(1)
    assert calibrate.evaluation_layout(iaro2, CPU, 2048) == "plain"  # nearest measured: batch 256 (native_conv)
    with calibrate.locked_cache() as contents:
        contents[calibrate.machine_key(CPU, 1)][calibrate.shape_id({**iaro2, "batch_size": 1024})] = \
            measured("channels_last")
    assert calibrate.evaluation_layout(iaro2, CPU, 2048) == "plain"
    shown = CliRunner().invoke(main, ["bench", "--calibration"])
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if line.startswith("iaro2 batch=2048"))
    assert "plain" in row.split() and "borrowed from batch=256" in row  # what `tunefm bench --calibration` shows


def test_the_cpu_decision_reads_calibrated_shapes_from_the_cache(cache, monkeypatch):
    configs = [{"model": "iaro1", "batch_size": 8, "lr": lr} for lr in (0.1, 0.01, 0.001)]
    first = placement.decide("auto", configs, False, 1, None, train_images=3000, max_epochs=3)
    measured = calibrate.cached()[calibrate.machine_key(CPU, 1)]
    assert set(measured) == {calibrate.shape_id(configs[0])} and set(measured[calibrate.shape_id(configs[0])]["fused"]) == {"2"}
    monkeypatch.setattr(calibrate, "measure_solo", lambda *a: pytest.fail("measured again"))
    monkeypatch.setattr(calibrate, "measure_fused", lambda *a: pytest.fail("measured again"))
    assert placement.decide("auto", configs, False, 1, None, train_images=3000, max_epochs=3) == first
