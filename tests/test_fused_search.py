"""Fused trials through Ray Tune: members of one group report every epoch, ASHA stops them one
by one and a waiting trial takes the freed place, their numbers equal the same trials run
with --fuse off; a fused search resumes after Ctrl-C; a killed executor's trials are
retried from their checkpoints. Real Ray, real processes, the real data sliced small."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import own_processes
from local_cluster import fresh_ray_env
from test_resume import assert_only_tunefms_lines, group_is_gone, restored_from_checkpoint, start_tunefm

from tunefm.engine import training_plan
from tunefm.run import store
from tunefm.tune import placement
from tunefm.tune.search import run
from tunefm.tune.settings import SearchSettings

SIX = '''
"""six: six trials of one shape (iaro1, batch 32) with mixed lr, momentum, weight decay and seed."""
from tunefm.study import Study

STUDY = Study(
    name="six", description="one shape, six trials",
    fixed={"model": "iaro1", "batch_size": 32},
    variants=[{"lr": 0.02, "momentum": 0.5, "weight_decay": 0.001, "seed": 1, "max_epochs": 8},
              {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0, "seed": 2, "max_epochs": 2},  # leaves early
              {"lr": 0.03, "momentum": 0.0, "weight_decay": 0.0001, "seed": 3, "max_epochs": 8},
              {"lr": 0.002, "momentum": 0.9, "weight_decay": 0.0, "seed": 4, "max_epochs": 8},
              {"lr": 0.005, "momentum": 0.5, "weight_decay": 0.001, "seed": 5, "max_epochs": 8},
              {"lr": 1e-06, "momentum": 0.0, "weight_decay": 0.0, "seed": 6, "max_epochs": 8}],  # learns nothing
    max_epochs=8, test_top=0,
)
'''
KEYS = ["lr", "momentum", "weight_decay", "seed"]  # identify a trial across runs
SIZES = dict(train_size=1000, val_size=500)


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "six.py"
    path.write_text(SIX)
    return path


HOPELESS = 1e-06


def order_seed(six: Path) -> int:
    """A --seed whose trial order makes the story certain: the first four start together, one
    of them (max_epochs 2) leaves early, the hopeless trial takes its place, reaches ASHA's
    first rung after four good ones and is stopped, and the last trial takes the place it frees."""
    from tunefm import study

    configs = study.load(str(six)).configs()
    for seed in range(1000):
        order = placement.fused_order(configs, seed)
        if order[4]["lr"] == HOPELESS and any(c.get("max_epochs") == 2 for c in order[:4]):
            return seed
    raise AssertionError("no such order")


def search(six: Path, results: Path, name: str, data_dir: Path, **options):
    # One CPU slot of 2 CPUs: one executor, four members at a time, two trials waiting.
    settings = SearchSettings(space=str(six), name=name, results_dir=str(results), data_dir=str(data_dir),
                              cpus_per_trial=2, grace_period=1, reduction_factor=2, seed=order_seed(six),
                              flush_interval_s=0, loop="plain", **SIZES, **options)
    return run(settings, echo=lambda line: None).run_dir


@pytest.fixture(scope="module")
def fused_and_alone(ray_session, six, tmp_path_factory, data_dir):
    results = tmp_path_factory.mktemp("fused")
    return (search(six, results, "fused", data_dir, fuse="on", group_size=4),
            search(six, results, "alone", data_dir, fuse="off"))


def by_config(epochs: pd.DataFrame) -> pd.DataFrame:
    return epochs.set_index(KEYS + ["epoch"])[["train_loss", "train_acc", "val_loss", "val_acc"]].sort_index()


@pytest.mark.slow
def test_fused_members_report_like_trials_and_match_unfused_ones(fused_and_alone):
    fused, alone = fused_and_alone
    trials, epochs = store.read_trials(fused), store.read_epochs(fused)
    assert len(trials) == 6 and set(trials.status) == {"TERMINATED"}
    assert set(trials.execution) == {"fused:plain"} and (trials.group_size >= 1).all()
    assert sorted(trials.seed) == [1, 2, 3, 4, 5, 6]  # the study's own seeds
    assert trials.group_size.max() == 4 and trials.fused_group.nunique() == 1  # one group, full at times
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == trials.epochs.sum()
    info = store.read_json(fused / store.RUN_FILE)
    assert info["fusion"]["fuse"] and info["fusion"]["capacity"] == 4
    # Every epoch both runs trained: fusion is how trials run, not what they are. The group's
    # kernels round differently from a trial's own (about 1e-7 per step), so the first two epochs
    # agree to 1e-5; later, once rounding has flipped a ReLU, two runs part as any two on
    # different kernels do (3.4e-5 at epoch 8 on one machine of this kind; README, "Numerics"),
    # so later epochs are held to 1e-3.
    mine, theirs = by_config(epochs), by_config(store.read_epochs(alone))
    both = mine.index.intersection(theirs.index)
    early = both[both.get_level_values("epoch") <= 2]
    assert len(both) >= 10 and len(early) >= 6
    for column in ("train_loss", "val_loss"):
        pd.testing.assert_series_equal(mine.loc[early, column], theirs.loc[early, column], rtol=1e-5, atol=0)
        pd.testing.assert_series_equal(mine.loc[both, column], theirs.loc[both, column], rtol=1e-3, atol=0)
    assert ((mine.loc[both, "val_acc"] - theirs.loc[both, "val_acc"]).abs() <= 3 / 500).all()
    assert set(store.read_trials(alone).execution) == {"plain"}


@pytest.mark.slow
def test_asha_stops_members_one_by_one_and_waiting_trials_take_their_place(fused_and_alone):
    trials = store.read_trials(fused_and_alone[0]).set_index("trial_id")
    trials["ended"] = trials.started_at + trials.total_time_s
    # Tune creates the trials in the search's order (their ids count up); two places that free
    # at once start two trials within milliseconds of each other, in either order.
    order = trials.sort_index()
    first, late = order.iloc[:4], order.iloc[4:]
    hopeless = order.iloc[4]
    assert hopeless.lr == HOPELESS and first.max_epochs.eq(2).sum() == 1
    # Four trials start together; each of the others starts when a place frees (the early
    # leaver finishes, or ASHA stops a member) and joins the same, running group.
    assert (late.started_at >= first.ended.min() - 1.0).all()
    assert set(trials.fused_group) == {hopeless.fused_group}
    assert (first.ended > late.started_at.max()).any()  # a first-wave member was still training
    # ASHA stopped the hopeless member alone at its first rung; its group trained on.
    assert hopeless.stopped_early and hopeless.epochs == 1
    assert (trials.epochs > 2).any() and trials.stopped_early.sum() < len(trials)


def test_a_small_fused_search_trains_its_trials_through_one_executor(ray_session, tmp_path, data_dir):
    """The fast tier's fused search: two trials of one shape, 2 epochs, as fused members
    (member.py in the trial processes, the executor actor, the coordinator)."""
    outcome = run(SearchSettings(space="fourfam", sets=("model=iaro1", "batch_size=32", "lr=0.01,0.02"), max_epochs=2,
                                 train_size=256, val_size=128, test_size=64, test_top=1, fuse="on", early_stop=False,
                                 results_dir=str(tmp_path), data_dir=str(data_dir)), echo=lambda line: None)
    trials = outcome.trials
    shown = trials[["trial_id", "status", "epochs", "execution", "fused_group", "test_acc"]].to_string()
    assert len(trials) == 2 and (trials.status == "TERMINATED").all() and (trials.epochs == 2).all(), shown
    assert trials.execution.str.startswith("fused:").all() and (trials.fused_group != "").all(), shown
    assert trials.test_acc.notna().sum() == 1, shown
    assert trials.fused_group.str.split("/").str[0].nunique() == 2, shown  # one per CPU slot: spread, not stacked
    info = store.read_json(outcome.run_dir / store.RUN_FILE)
    assert info["fusion"]["fuse"] is True and info["status"] == "completed" and info["fusion"]["capacity"] == 2


def test_fuse_is_checked_and_explained():
    with pytest.raises(Exception, match="--fuse must be one of auto, on, off, got 'maybe'"):
        SearchSettings(fuse="maybe").validate()
    with pytest.raises(Exception, match="--group-size must be >= 2, got 1"):
        SearchSettings(group_size=1).validate()
    alone = placement.decide("on", [{"model": "iaro1", "batch_size": b, "lr": 0.1} for b in (8, 16)], False, 1, None)
    assert not alone.fuse and "no two trials share a shape" in alone.reason
    assert placement.decide("off", None, True, 1, None).reason == "--fuse off"
    gpu = placement.decide("auto", [{"model": "iaro1", "batch_size": 8, "lr": lr} for lr in (0.1, 0.2)], True, 1, None)
    assert gpu.fuse and gpu.on_gpus and gpu.capacity == 2  # two trials: a share of 1/2 each, not 1/16
    many = [{"model": "iaro1", "batch_size": 8, "lr": lr / 100} for lr in range(1, 41)]
    assert placement.decide("auto", many, True, 1, None, gpus=1).capacity == placement.GPU_CAPACITY
    assert placement.decide("auto", many, True, 1, None, gpus=4).capacity == 10  # spread over the GPUs
    # A pinned loop: nothing calibrated, so `on` spreads up to CPU_CAPACITY per slot.
    assert placement.decide("on", many, False, 1, None, loop="plain", slots=2).capacity == placement.CPU_CAPACITY
    assert placement.decide("on", many[:10], False, 1, None, loop="plain", slots=2).capacity == 5
    assert placement.decide("auto", None, True, 1, 0.125).capacity == 8
    # A pinned loop: on a GPU auto still fuses (groups in that loop's kernels); on CPUs trials train apart.
    two = [{"model": "iaro1", "batch_size": 8, "lr": lr} for lr in (0.1, 0.2)]
    pinned = placement.decide("auto", two, True, 1, None, loop="captured")
    assert pinned.fuse and pinned.on_gpus and pinned.capacity == 2 and "--loop captured's kernels" in pinned.reason
    on_cpus = placement.decide("auto", two, False, 1, None, loop="plain")
    assert not on_cpus.fuse and "--loop plain pins how trials train, so on CPUs" in on_cpus.reason
    assert not placement.decide("auto", two, True, 1, 0, loop="plain").fuse  # --gpus-per-trial 0: CPUs
    captured = training_plan.group_plan(two[0], torch.device("cuda"), "captured", "auto", 1000, 1, 2)
    assert captured is not None and captured.group_size == 2 and captured.variant == "captured"


def test_fused_order_keeps_shapes_together():
    configs = [{"model": "iaro1", "batch_size": b, "lr": lr} for b in (8, 16, 32) for lr in (0.1, 0.2, 0.3)]
    ordered = placement.fused_order(configs, seed=0)
    assert sorted(map(str, ordered)) == sorted(map(str, configs))
    batches = [c["batch_size"] for c in ordered]
    assert sum(a != b for a, b in zip(batches, batches[1:])) == 2  # three runs of one shape each
    assert placement.fused_order(configs, seed=0) == ordered != placement.fused_order(configs, seed=1)


def executor_processes() -> list[int]:
    found = []
    for pid in own_processes():
        try:
            if b"ray::Executor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_killed_executors_trials_are_retried_from_their_checkpoints(ray_session, six, tmp_path, data_dir):
    settings = SearchSettings(space=str(six), name="kill", results_dir=str(tmp_path), data_dir=str(data_dir),
                              cpus_per_trial=2, fuse="on", group_size=4, early_stop=False, flush_interval_s=0,
                              loop="plain", test_top=0, **SIZES)
    run_dir = tmp_path / "kill"
    thread = threading.Thread(target=run, args=(settings,), kwargs={"echo": lambda line: None})
    thread.start()
    killed = []
    while thread.is_alive() and not killed:
        if store.has_results(run_dir) and len(store.read_epochs(run_dir)) >= 6:
            killed = executor_processes()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    thread.join()
    assert len(killed) == 1
    trials, epochs = store.read_trials(run_dir), store.read_epochs(run_dir)
    assert len(trials) == 6 and set(trials.status) == {"TERMINATED"} and (trials.epochs == trials.max_epochs).all()
    retried = trials[trials.retries >= 1].trial_id  # the members training when it died
    assert len(retried) >= 1
    assert any(restored_from_checkpoint(run_dir / store.TUNE_DIR, t) for t in retried)  # not from scratch
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == trials.max_epochs.sum()


@pytest.mark.slow
def test_ctrl_c_of_a_fused_search_then_resume_loses_and_repeats_nothing(six, tmp_path, data_dir):
    from test_gpu_path import retag_checkpoints_as_cuda

    env = {**fresh_ray_env(tmp_path), "TUNEFM_DATA_DIR": str(data_dir)}
    results = tmp_path / "results"
    args = ["search", "--space", str(six), "--fuse", "on", "--group-size", "4", "--cpus-per-trial", "2",
            "--no-early-stop", "--train-size", "1000", "--val-size", "500", "--test-top", "0", "--loop", "plain",
            "--results", str(results), "--name", "f"]
    process = start_tunefm(env, *args)
    run_dir, deadline = results / "f", time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if store.has_results(run_dir) and len(store.read_epochs(run_dir)) >= 8:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert group_is_gone(process.pid)
    before = store.read_epochs(run_dir)
    assert 8 <= len(before) < 42
    # As if a GPU had written them: the members rejoin their executor from them on this CPU.
    assert retag_checkpoints_as_cuda(run_dir) >= 6

    resumed = subprocess.run([sys.executable, "-c", "from tunefm.cli import main; main()", "search", "--name", "f",
                              "--resume", "--results", str(results)], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Fusion: on" in resumed.stdout
    assert_only_tunefms_lines(out, err, resumed.stdout, resumed.stderr)
    trials, epochs = store.read_trials(run_dir), store.read_epochs(run_dir)
    assert len(trials) == 6 and set(trials.status) == {"TERMINATED"} and (trials.epochs == trials.max_epochs).all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 42
    kept = before.set_index(["trial_id", "epoch"]).sort_index()
    now = epochs.set_index(["trial_id", "epoch"]).sort_index().loc[kept.index]
    pd.testing.assert_frame_equal(kept[["train_loss", "val_loss"]], now[["train_loss", "val_loss"]])
