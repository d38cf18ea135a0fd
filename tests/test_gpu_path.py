"""The GPU path, tested on a CPU wherever a defect's cause shows there (issue 26's list).

What only a GPU can show (captured steps, CUDA kernels' determinism, one executor per
device) is checked by `benchmarks/gpu_acceptance.py`, which also runs here on a CPU.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import REPO

from tunefm.engine import devices, fused, solo, training, training_plan
from tunefm.errors import UserError
from tunefm.run import checkpoints, store
from tunefm.tune import executor, placement

BASE = {"model": "iaro1", "batch_size": 32, "lr": 0.05, "momentum": 0.9, "seed": 3}
DROPOUT = {"model": "kahn", "batch_size": 32, "lr": 0.01, "momentum": 0.9, "seed": 5, "dropout": 0.5}  # small: a conv net with dropout


@pytest.fixture(scope="module")
def arrays(data_dir):
    from tunefm.engine import data

    splits = data.load(data_dir, train_size=256, val_size=128, test_size=10)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


_TAG_AS_CUDA = [False]


def _tagger(storage):
    return "cuda:0" if _TAG_AS_CUDA[0] and storage.device.type == "cpu" else None


torch.serialization.register_package(0, _tagger, lambda storage, location: None)


@contextlib.contextmanager
def storages_tagged_cuda():
    """torch.save records every storage as living on cuda:0, as a checkpoint written by a
    process that kept its tensors on the GPU does (PyTorch's own registry of locations)."""
    _TAG_AS_CUDA[0] = True
    try:
        yield
    finally:
        _TAG_AS_CUDA[0] = False


def as_gpu_checkpoint(state: dict) -> bytes:
    buffer = io.BytesIO()
    with storages_tagged_cuda():
        torch.save(state, buffer)
    return buffer.getvalue()


def retag_checkpoints_as_cuda(folder: Path) -> int:
    """Rewrite every state.pt under `folder` as if a GPU had saved it; returns how many."""
    paths = sorted(folder.rglob(checkpoints.STATE_FILE))
    for path in paths:
        path.write_bytes(as_gpu_checkpoint(torch.load(path, weights_only=False)))
    return len(paths)


def test_the_gpu_checkpoint_fixture_is_one_a_plain_load_refuses_on_a_cpu():
    blob = as_gpu_checkpoint({"w": torch.ones(2)})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(io.BytesIO(blob), weights_only=False)
    assert training.load_checkpoint(blob)["w"].device.type == "cpu"


def curve(config, arrays, epochs, state=None):
    return [(m["train_loss"], m["val_loss"]) for m, _ in solo.fit(config, arrays, epochs,
                                                                        torch.device("cpu"), state)]


@pytest.mark.parametrize("config", [BASE, DROPOUT], ids=["iaro1", "kahn dropout"])
def test_a_checkpoint_from_a_gpu_continues_on_a_cpu_bit_for_bit(config, arrays):
    """Defect 2: restored with map_location="cpu" wherever it was saved, it continues exactly."""
    torch.set_num_threads(1)
    whole = curve(config, arrays, 2)
    _, state = next(iter(solo.fit(config, arrays, 2, torch.device("cpu"))))
    restored = training.init_state(config, torch.device("cpu"))
    restored.load_state_dict(training.load_checkpoint(as_gpu_checkpoint(state.state_dict())))
    assert curve(config, arrays, 2, restored) == whole[1:]


def test_checkpoints_are_saved_from_the_cpu_and_hold_no_process_wide_rng(arrays):
    """Defects 2 and 3: every tensor saved from the CPU; no torch or CUDA global RNG state (one
    per visible GPU, shared by every member of an executor), only the trial's own generators."""
    state = training.init_state(DROPOUT, torch.device("cpu"))
    blob = training.checkpoint_bytes(state.state_dict())
    saved = torch.load(io.BytesIO(blob), weights_only=False)
    assert {"torch_rng", "cuda_rng"}.isdisjoint(saved) and {"generator", "dropout_rng"} <= set(saved)
    assert saved["dropout_rng"].dtype == torch.uint8 and saved["dropout_rng"].device.type == "cpu"


def test_dropout_masks_are_the_trials_own_whatever_else_draws(arrays):
    """Defect 3: dropout draws from the trial's generator on the host, not the device's global
    one, so nothing else in the process (another trial, a fused neighbour) moves its masks."""
    torch.set_num_threads(1)
    alone = curve(DROPOUT, arrays, 2)
    disturbed = []
    for metrics, _ in solo.fit(DROPOUT, arrays, 2, torch.device("cpu")):
        disturbed.append((metrics["train_loss"], metrics["val_loss"]))
        torch.rand(1000)  # another trial's draws from torch's global generator
    assert disturbed == alone
    model = training.init_state(DROPOUT, torch.device("cpu")).model
    assert all(isinstance(m, training.DrawnDropout) for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_a_checkpoint_of_the_old_format_keeps_its_dropout_stream(arrays):
    """Checkpoints from before `dropout_rng` held the dropout stream as torch's global RNG."""
    torch.set_num_threads(1)
    whole = curve(DROPOUT, arrays, 2)
    _, state = next(iter(solo.fit(DROPOUT, arrays, 2, torch.device("cpu"))))
    old = state.state_dict()
    old["torch_rng"] = old.pop("dropout_rng")
    old["cuda_rng"] = [torch.zeros(16, dtype=torch.uint8)]  # the shape of get_rng_state_all(): ignored now
    restored = training.init_state(DROPOUT, torch.device("cpu"))
    restored.load_state_dict(training.load_checkpoint(as_gpu_checkpoint(old)))
    assert curve(DROPOUT, arrays, 2, restored) == whole[1:]


def run_epochs(ex: executor.Executor, trial_ids: list[str]) -> dict:
    results = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, ex.next_epoch(t))) for t in trial_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_the_executor_joins_a_member_from_a_gpu_checkpoint(arrays):
    """Defects 1 and 5: `join` reads the checkpoint on the CPU (no device work in the caller's
    thread); the round thread places it, and the member continues as from any checkpoint."""
    torch.set_num_threads(1)
    whole = curve(BASE, arrays, 2)
    ex = executor.Executor(arrays, "cpu", threads=1, loop="plain", fuse="on", capacity=4, max_epochs=2)
    try:
        ex.join("a", BASE)
        first = run_epochs(ex, ["a"])["a"]
        blob = as_gpu_checkpoint(torch.load(io.BytesIO(first[1]), weights_only=False))
        ex.join("b", BASE, blob)
        pending = ex.members["b"].pending
        assert {t.device.type for t in pending["model"].values()} == {"cpu"}
        second = run_epochs(ex, ["a", "b"])
    finally:
        ex.stop()
    for trial_id in ("a", "b"):
        metrics = second[trial_id][0]
        assert metrics["epoch"] == 2
        assert (metrics["train_loss"], metrics["val_loss"]) == pytest.approx(whole[1], rel=1e-5)


def test_a_sticky_cuda_error_breaks_the_executor_and_other_errors_do_not(arrays, monkeypatch):
    """An illegal access leaves a process's CUDA context unusable: every member fails at once
    and `ping` raises, so the coordinator replaces the executor; an out-of-memory error fails
    only the members that hit it. (The error is raised by hand: a CPU cannot make one.)"""
    torch.set_num_threads(1)
    errors = iter([RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                   RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")])

    def failing_epoch(self, x, y):
        raise next(errors)

    monkeypatch.setattr(fused.FusedGroup, "train_epoch", failing_epoch)
    ex = executor.Executor(arrays, "cpu", threads=1, loop="plain", fuse="on", capacity=4, max_epochs=2, settle_s=0)
    try:
        for trial_id in ("a", "b"):
            ex.join(trial_id, {**BASE, "seed": ord(trial_id)})
        with pytest.raises(RuntimeError, match="out of memory"):
            run_epochs_raising(ex, "a", "b")
        assert ex.ping() == ex.name and ex.broken is None  # goes on: Tune retries those two here
        for trial_id in ("a", "b"):
            ex.join(trial_id, {**BASE, "seed": ord(trial_id)})
        with pytest.raises(executor.ExecutorBroken, match="can no longer train: CUDA error: an illegal memory access"):
            run_epochs_raising(ex, "a", "b")
        with pytest.raises(executor.ExecutorBroken):
            ex.ping()
        ex.join("c", BASE)
        with pytest.raises(executor.ExecutorBroken):
            ex.next_epoch("c")  # at once, not after a round that never comes
    finally:
        ex.stop()
    assert devices.is_sticky_error(RuntimeError("CUDA error: device-side assert triggered"))
    assert not devices.is_sticky_error(RuntimeError("CUDA out of memory")) and not devices.is_sticky_error(ValueError())


def run_epochs_raising(ex: executor.Executor, *trial_ids: str) -> None:
    """Each member's next epoch from its own thread; raises the first error any of them got."""
    errors = []

    def ask(trial_id):
        try:
            ex.next_epoch(trial_id)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(t,)) for t in trial_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(errors) == len(trial_ids)
    raise errors[0]


def test_the_coordinator_replaces_an_executor_whose_ping_raises(ray_session):
    """A broken executor (its ping raises) is killed and forgotten, so the next trial placed
    there starts a new process; a live one is kept."""
    from tunefm.tune.coordinator import Coordinator

    @ray_session.remote(num_cpus=0)
    class Stand:  # an executor's ping, fine until it breaks
        def __init__(self):
            self.broken = False

        def hit(self):
            self.broken = True

        def ping(self):
            if self.broken:
                raise executor.ExecutorBroken("can no longer train: CUDA error: an illegal memory access")
            return "fine"

    coordinator = Coordinator([None], "run", 1, "plain", "on", 4, 2, 1.0)
    stand = Stand.remote()
    coordinator.executors = {("n", "cuda", "0"): stand}
    assert coordinator._alive(("n", "cuda", "0")) and list(coordinator.executors) == [("n", "cuda", "0")]
    ray_session.get(stand.hit.remote())
    assert not coordinator._alive(("n", "cuda", "0")) and coordinator.executors == {}
    with pytest.raises(ray_session.exceptions.RayActorError):
        ray_session.get(stand.ping.remote(), timeout=30)  # killed, not left holding the GPU


def test_evaluate_reads_checkpoints_written_on_a_gpu(tmp_path, data_dir):
    """tunefm evaluate on a CPU, from best-validation checkpoints a GPU wrote."""
    from test_evaluate import hand_made_run

    from tunefm.engine import data
    from tunefm.tune import evaluate

    splits = data.load(data_dir, train_size=600, val_size=300, test_size=500)
    hand_made_run(tmp_path / "cpu", splits)
    hand_made_run(tmp_path / "gpu", splits)
    assert retag_checkpoints_as_cuda(tmp_path / "gpu") == 2
    for name in ("cpu", "gpu"):
        outcome = evaluate.evaluate_trials(tmp_path / name, splits.test_x, splits.test_y, top_k=1, echo=lambda s: None)
        assert outcome.evaluated == ["t0"]
    accuracies = [store.read_trials(tmp_path / name).iloc[0].test_acc for name in ("cpu", "gpu")]
    assert accuracies[0] == accuracies[1] > 0.1


def test_a_captured_loop_with_dropout_runs_and_says_plain():
    """Defect 8: a captured step cannot draw each step's masks, so a model with dropout runs
    (and reports) plain, alone or fused; a group that was asked to capture on a CPU ran plain."""
    assert training_plan.runnable_loop("captured", DROPOUT) == "plain"
    assert training_plan.runnable_loop("captured", {**DROPOUT, "dropout": 0.0}) == "captured"
    assert training_plan.runnable_loop("captured", BASE) == "captured"
    assert training_plan.solo_loop("captured", DROPOUT, torch.device("cpu")) == "plain"
    group = fused.FusedGroup(torch.device("cpu"), capture=True)
    group.add(BASE)
    x, y = torch.zeros(64, 1, 28, 28), torch.zeros(64, dtype=torch.int64)
    group.train_epoch(x, y)
    assert group.ran == "plain"


def test_no_module_but_devices_calls_cuda_itself():
    """Defect 4: every CUDA call that depends on the current device is in `devices.py`, where it
    names its device; elsewhere a bare `torch.cuda...` or `torch.backends.cudnn...` would act on
    device 0 or on the whole process."""
    offenders = []
    for path in sorted((REPO / "tunefm").rglob("*.py")):
        if path.name == "devices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch" \
                    and node.attr == "cuda":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("cudnn", "use_deterministic_algorithms"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_ray_gpu_ids_map_to_devices_in_the_executors_own_process(monkeypatch):
    """Defect 7: the executor, on the GPU's node, maps Ray's id (an index or a UUID, as the node's
    CUDA_VISIBLE_DEVICES names it) to its torch index; an id it cannot see is one clear error."""
    assert devices.cuda_index("7", visible="5,7") == 1
    assert devices.cuda_index("GPU-bbb", visible="GPU-aaa, GPU-bbb") == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.cuda_index("3") == 3  # every GPU of the node visible
    with pytest.raises(UserError, match="no GPU of this node has that UUID"):
        devices.cuda_index("GPU-nowhere")
    with pytest.raises(UserError, match="sees no GPU"):
        devices.cuda_index("0", visible="")
    with pytest.raises(UserError, match="not among"):
        devices.cuda_index("2", visible="0,1")
    assert devices.for_ray_gpu(None) == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa,GPU-bbb")
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert devices.for_ray_gpu("GPU-bbb") == torch.device("cuda", 1)


def test_a_logical_gpu_is_the_cpu_for_an_executor_too(monkeypatch):
    """A node that declares GPUs without CUDA (a `ray up` cluster on one machine, a node started
    with --num-gpus) gives executors a GPU id with no device behind it: they train on the CPU,
    as solo trials do, instead of failing at their first CUDA call."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    assert devices.for_ray_gpu("0") == torch.device("cpu")
    assert training_plan.trial_device(["0"]) == torch.device("cpu")


def test_the_coordinator_leaves_the_gpu_index_to_the_executor():
    """The coordinator passes Ray's GPU id on; it computes no device index (its node may differ)."""
    for module in ("placement.py", "coordinator.py"):
        assert "cuda_index" not in (REPO / "tunefm" / "tune" / module).read_text()
    assert "gpu_id=" in (REPO / "tunefm" / "tune" / "coordinator.py").read_text()


def test_pinned_loops_ask_for_deterministic_kernels(arrays, monkeypatch):
    """Defect 9: a pinned loop on CUDA turns on deterministic kernels before it trains (the
    GPU acceptance script checks the bits); on a CPU there is nothing to turn on."""
    script = ("import os, torch; from tunefm.engine import devices; devices.make_deterministic(torch.device('cuda')); "
              "print(torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, "
              "torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
              "os.environ['CUBLAS_WORKSPACE_CONFIG'])")
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "False", "True", "True", devices.CUBLAS_WORKSPACE]
    calls = []
    monkeypatch.setattr(devices, "make_deterministic", calls.append)
    for loop in ("plain", "auto"):
        executor.Executor(arrays, "cpu", loop=loop, fuse="on", capacity=2, max_epochs=1).stop()
    assert calls == [torch.device("cpu")]  # the pinned one only
    assert not torch.are_deterministic_algorithms_enabled()  # this process untouched


@pytest.mark.parametrize("capacity", range(1, 17))
def test_fractional_shares_fit_for_every_capacity(capacity):
    """Defect 6: Ray counts resources in units of 1/10,000; a share rounded up (1/6 -> 0.1667)
    lets only capacity - 1 trials onto a GPU."""
    for amount in (1.0, 2.0):
        share = placement.share(amount, capacity)
        units = round(share * 10_000)
        assert abs(share * 10_000 - units) < 1e-6  # a whole number of Ray's units
        assert units * capacity <= amount * 10_000 < (units + 1) * capacity


def test_gpus_per_trial_zero_means_no_gpu():
    """--gpus-per-trial 0 on a GPU cluster: fused trials ask for no GPU and train on CPU slots."""
    configs = [{**BASE, "lr": lr} for lr in (0.01, 0.02)]
    on_gpus = placement.decide("on", configs, cluster_has_gpus=True, cpus_per_trial=1, gpus_per_trial=0,
                               loop="plain")  # pinned: nothing to calibrate for where the trials go
    assert on_gpus.fuse and not on_gpus.on_gpus and "GPU" not in on_gpus.reason
    assert not placement.uses_gpus(True, 0) and placement.uses_gpus(True, None) and placement.uses_gpus(True, 0.25)
    assert "GPU" not in placement.member_resources(1, 8, placement.uses_gpus(True, 0))
    assert placement.member_resources(1, 6, True) == {"CPU": 0.1666, "GPU": 0.1666}


def test_group_size_on_a_gpu_cluster_keeps_the_trials_on_gpus():
    """--group-size sets how many share a GPU; it must not send fused trials to CPU slots."""
    configs = [{**BASE, "lr": lr} for lr in (0.01, 0.02, 0.03)]
    sized = placement.decide("on", configs, cluster_has_gpus=True, cpus_per_trial=1, gpus_per_trial=None,
                             group_size=3)
    assert sized.fuse and sized.on_gpus and sized.capacity == 3
    assert sized.reason.startswith("3 trials per GPU, as --group-size asks")
    on_cpus = placement.decide("on", configs, cluster_has_gpus=False, cpus_per_trial=1, gpus_per_trial=None,
                               group_size=3, train_images=3_000, max_epochs=1)
    assert on_cpus.fuse and not on_cpus.on_gpus and on_cpus.capacity == 3 and "per CPU slot" in on_cpus.reason


def test_the_packing_benchmark_does_not_wait_forever_on_a_dead_worker(data_dir):
    """Defect 10: a worker that crashed is an error within the timeout, not a hang."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import packing
    finally:
        sys.path.pop(0)
    from types import SimpleNamespace

    pool = packing.Pool(1, SimpleNamespace(data_dir=str(data_dir), images=64, device="cpu"))
    try:
        pool.processes[0].kill()
        pool.processes[0].join(timeout=30)
        with pytest.raises(RuntimeError, match="exited"):
            pool._result(timeout=2)
    finally:
        pool.close()


@pytest.mark.slow
def test_the_gpu_acceptance_script_runs_on_a_cpu_without_ray(tmp_path, data_dir):
    """`benchmarks/gpu_acceptance.py --device cpu --quick` as CI runs it: every check passes and
    Ray is never imported."""
    env = {**os.environ, "TUNEFM_DATA_DIR": str(data_dir), "TUNEFM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-acceptance-cpu.json").read_text())
    assert report["machine"]["ray_imported"] is False
    assert report["checks"] and all(c["status"] == "pass" for c in report["checks"])
    assert set(report["sections"]) == {"loops", "packing", "numerics", "executor", "pinned", "devices"}
    assert all(s["error"] is None and s["rows"] for name, s in report["sections"].items() if name != "devices")
