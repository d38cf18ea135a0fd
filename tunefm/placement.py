"""Fused execution on a Ray cluster: whether to fuse, what a fused trial asks of Ray, and
which executor trains it.

    decision = placement.decide("auto", study.configs(), cluster_has_gpus, cpus_per_trial=1, gpus_per_trial=None)
    running = placement.start(run_name, arrays, settings, decision, max_epochs)   # the coordinator actor
    trainable = placement.member_trainable_for(running.name, 1, decision, cluster_has_gpus)
    callbacks.append(placement.Membership(running.name))
    ...
    placement.stop(running)

Resources. Fused trials are accounted like fractional GPUs: a trial asks Ray for
1/capacity of a CPU slot (`--cpus-per-trial`), and of a GPU where the cluster has them, so
Ray runs `capacity` trials per slot or GPU, and for each slot or GPU one executor
(`executor.py`, a Ray actor that asks for nothing itself) trains them. The executors hold
the data once per device; the trial processes hold no data and no torch.

Placement. One coordinator actor per search starts executors where trials land, on first
use: one per GPU (the GPU Ray gave the trial), or on a CPU node one per CPU slot, up to the
node's slots; a trial goes to the executor of its node that already trains its shape and
has room, else the least busy one. An executor that died (killed, its node lost) is
replaced on the next trial that asks for it; its trials fail and Tune retries them from
their checkpoints (`--max-failures`). When ASHA stops a trial, `Membership` (a Tune
callback on the driver) tells its executor at once, so the group never waits for it.

Deciding (`--fuse auto`): where the cluster has GPUs, fuse (small nets leave a GPU mostly
idle; results/benchmarks/packing-cuda.md). On CPUs only, fuse if calibration
(`calibrate.py`, on this machine) says the study as a whole would train at least
AUTO_MIN_SPEEDUP times faster; for most shapes a CPU gains nothing from fusing.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass

from ray.tune import Callback

from tunefm import calibrate, fused
from tunefm.errors import UserError

FUSE_MODES = ("auto", "on", "off")
GPU_CAPACITY = 16  # trials per GPU when fused (the largest group calibrated)
CPU_CAPACITY = 8  # trials per CPU slot for --fuse on (auto: the calibrated best)
AUTO_MIN_SPEEDUP = 1.2  # the whole study, CPU only: below this, auto keeps trials apart


@dataclass(frozen=True)
class Decision:
    fuse: bool
    capacity: int  # trials per CPU slot or GPU
    reason: str

    def record(self) -> dict:
        return {"fuse": self.fuse, "capacity": self.capacity, "reason": self.reason}


def check_mode(mode: str) -> str:
    if mode not in FUSE_MODES:
        raise UserError(f"--fuse must be one of {', '.join(FUSE_MODES)}, got {mode!r}")
    return mode


def shape_counts(configs: list[dict]) -> Counter:
    return Counter(fused.shape_key(c) for c in configs)


def decide(mode: str, configs: list[dict] | None, cluster_has_gpus: bool, cpus_per_trial: float,
           gpus_per_trial: float | None, group_size: int | None = None, train_images: int = 50_000,
           max_epochs: int = 100, loop: str = "auto") -> Decision:
    """Whether the study's trials train fused, and how many share a slot or GPU (`group_size`
    if given). `configs`: the grid's trials (None for a searcher that draws them as it goes);
    `train_images` and `max_epochs` size their work, for what is worth measuring; `loop`: the
    search's --loop."""
    check_mode(mode)
    if mode == "off":
        return Decision(False, 1, "--fuse off")
    if mode == "auto" and loop != "auto":  # which trials share a group depends on timing, and so would the bits
        return Decision(False, 1, f"--loop {loop} pins how trials train, so auto keeps them apart and a run "
                                  f"gives the same bits every time (--fuse on fuses anyway)")
    decision = _decide(mode, configs, cluster_has_gpus, cpus_per_trial, gpus_per_trial, train_images, max_epochs)
    if decision.fuse and group_size:
        return Decision(True, group_size, f"{decision.reason}; --group-size {group_size}")
    return decision


def _decide(mode: str, configs: list[dict] | None, cluster_has_gpus: bool, cpus_per_trial: float,
            gpus_per_trial: float | None, train_images: int, max_epochs: int) -> Decision:
    counts = shape_counts(configs) if configs is not None else None
    if counts is not None and max(counts.values(), default=0) < 2:
        return Decision(False, 1, "no two trials share a shape (model and options, batch size, optimizer, "
                                  "output), so there is nothing to fuse; every trial trains alone")
    if uses_gpus(cluster_has_gpus, gpus_per_trial):
        capacity = int(1 / gpus_per_trial + 1e-9) if gpus_per_trial else GPU_CAPACITY
        if capacity < 2:
            return Decision(False, 1, f"--gpus-per-trial {gpus_per_trial:g} leaves room for one trial per GPU")
        return Decision(True, capacity, f"up to {capacity} trials per GPU, fused by shape")
    if mode == "on":  # each executor still picks the fastest measured group up to this size
        return Decision(True, CPU_CAPACITY, f"--fuse on: up to {CPU_CAPACITY} trials per CPU slot")
    if counts is None:
        return Decision(False, 1, "a searcher drawing trials one by one on CPUs: auto fuses only measured gains")
    return _decide_on_cpu(counts, configs, cpus_per_trial, train_images, max_epochs)


def _plan_for(config: dict, threads: int, largest: int) -> calibrate.FusionPlan:
    """One shape's fusion plan on this machine's CPU (a pool worker's task)."""
    import torch

    torch.set_num_threads(threads)
    return calibrate.fusion_plan(config, torch.device("cpu"), threads, largest=largest)


def _decide_on_cpu(counts: Counter, configs: list[dict], cpus_per_trial: float, train_images: int,
                   max_epochs: int) -> Decision:
    """Calibrate the shapes that could form groups (two trials or more, each with enough steps
    to repay measuring its loop, so that the solo loops measured here are ones its trials would
    measure anyway; cached) and compare their training time alone and fused, each shape at its
    best group size up to its trial count. Shapes too short to measure count as neither. The
    shapes are measured side by side, one process per CPU slot, as trials would run."""
    import multiprocessing as mp

    import torch

    from tunefm import trainable

    threads = max(1, int(cpus_per_trial))
    example = {fused.shape_key(c): c for c in configs}
    steps, longest = Counter(), Counter()  # a shape's steps in all, and its longest trial's
    for config in configs:
        key, trial_steps = fused.shape_key(config), trainable.training_steps(config, train_images, max_epochs)
        steps[key] += trial_steps
        longest[key] = max(longest[key], trial_steps)
    chosen = [key for key, n in counts.items() if n >= 2 and calibrate.worth_measuring(longest[key])]
    if not chosen:
        return Decision(False, 1, "no shape has enough training ahead to repay measuring whether fusing pays")
    tasks = [(example[key], threads, min(max(calibrate.GROUP_SIZES), counts[key])) for key in chosen]
    cpu = torch.device("cpu")
    plans = [calibrate.cached_plan(config, cpu, threads, largest) for config, _, largest in tasks]
    missing = [task for task, plan in zip(tasks, plans) if plan is None]
    workers = min(len(missing), max(1, (os.cpu_count() or 1) // threads))
    if workers > 1:  # worker processes only to measure: starting them costs seconds
        with mp.get_context("spawn").Pool(workers) as pool:
            measured = iter(pool.starmap(_plan_for, missing))
    else:
        measured = iter([_plan_for(*task) for task in missing])
    plans = [plan if plan is not None else next(measured) for plan in plans]
    alone = together = 0.0
    largest = 1
    for key, plan in zip(chosen, plans):
        samples = steps[key] * int(example[key]["batch_size"])
        alone += samples / plan.solo_samples_per_s
        together += samples / plan.samples_per_s
        largest = max(largest, plan.group_size)
    speedup = alone / together
    if speedup >= AUTO_MIN_SPEEDUP and largest > 1:
        return Decision(True, largest, f"calibration expects {speedup:.2f}x for this study here, "
                                       f"up to {largest} trials per CPU slot")
    return Decision(False, 1, f"calibration expects {speedup:.2f}x from fusing this study on this machine's "
                              f"CPUs (auto fuses from {AUTO_MIN_SPEEDUP:g}x)")


def fused_order(configs: list[dict], seed: int) -> list[dict]:
    """The grid in a seeded random order that keeps each shape's trials together, so trials
    running at once share shapes and form groups (shapes in random order, and trials within one)."""
    rng = random.Random(seed)
    by_shape: dict[tuple, list[dict]] = {}
    for config in configs:
        by_shape.setdefault(fused.shape_key(config), []).append(config)
    shapes = list(by_shape)
    rng.shuffle(shapes)
    ordered = []
    for shape in shapes:
        members = by_shape[shape]
        ordered += rng.sample(members, len(members))
    return ordered


RESOURCE_UNIT = 1e-4  # Ray counts fractional resources in units of 1/10,000


def share(amount: float, capacity: int) -> float:
    """amount/capacity floored to Ray's resource unit, so that `capacity` shares fit in `amount`
    (rounded to nearest, 1/6 of a GPU would be 0.1667, and only 5 of them fit in one GPU)."""
    return math.floor(amount / capacity / RESOURCE_UNIT + 1e-9) * RESOURCE_UNIT


def member_resources(cpus_per_trial: float, capacity: int, uses_gpus: bool) -> dict[str, float]:
    """A fused trial's share: 1/capacity of a CPU slot, and of a GPU where trials use GPUs."""
    bundle = {"CPU": share(cpus_per_trial, capacity)}
    if uses_gpus:
        bundle["GPU"] = share(1.0, capacity)
    return bundle


def uses_gpus(cluster_has_gpus: bool, gpus_per_trial: float | None) -> bool:
    """Whether a search's trials train on GPUs: the cluster has some and --gpus-per-trial is not 0."""
    return cluster_has_gpus and gpus_per_trial != 0


# ---- the coordinator (a Ray actor) ----------------------------------------------------------
class Coordinator:
    """Starts executors where trials land and tells each trial its executor."""

    def __init__(self, arrays_box: list, run_name: str, threads: int, loop: str, fuse: str, capacity: int,
                 max_epochs: int, cpus_per_trial: float):
        self.arrays_ref = arrays_box[0]  # in a list, so Ray passes the reference, not 47 MB of arrays
        self.run_name, self.threads, self.loop, self.fuse = run_name, threads, loop, fuse
        self.capacity, self.max_epochs, self.cpus_per_trial = capacity, max_epochs, cpus_per_trial
        self.executors: dict[tuple, object] = {}  # (node, device, slot) -> actor handle
        self.members: dict[tuple, dict[str, tuple]] = {}  # executor key -> {trial id: shape}
        self.assigned: dict[str, tuple] = {}  # trial id -> executor key
        self.started = 0
        self.lock = threading.Lock()

    def executor_for(self, trial_id: str, config: dict, node_id: str, gpu_ids: list[str]):
        with self.lock:
            key = self.assigned.get(trial_id)
            if key is None or not self._alive(key):
                if key is not None:
                    self.members.get(key, {}).pop(trial_id, None)
                key = self._choose(node_id, gpu_ids, fused.shape_key(config))
                self.assigned[trial_id] = key
                self.members.setdefault(key, {})[trial_id] = fused.shape_key(config)
            return self.executors[key]

    def leave(self, trial_id: str) -> None:
        with self.lock:
            key = self.assigned.pop(trial_id, None)
            if key is not None:
                self.members.get(key, {}).pop(trial_id, None)
                if key in self.executors:
                    self.executors[key].leave.remote(trial_id)

    def status(self) -> dict:
        import ray

        with self.lock:
            handles = dict(self.executors)
        return {"/".join(map(str, key)): ray.get(handle.status.remote()) for key, handle in handles.items()}

    def shutdown(self) -> None:
        import ray

        with self.lock:
            for handle in self.executors.values():
                ray.kill(handle, no_restart=True)
            self.executors.clear()

    def _alive(self, key: tuple) -> bool:
        import ray

        handle = self.executors.get(key)
        if handle is None:
            return False
        try:
            ray.get(handle.ping.remote(), timeout=60)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            del self.executors[key]  # dead, or gone with its node: the next trial here starts another
            return False

    def _choose(self, node_id: str, gpu_ids: list[str], shape: tuple) -> tuple:
        if gpu_ids:
            key = (node_id, "cuda", gpu_ids[0])
        else:
            slots = self._cpu_slots(node_id)
            keys = [(node_id, "cpu", slot) for slot in range(slots)]
            load = {k: len(self.members.get(k, {})) for k in keys}
            same_shape = [k for k in keys if shape in self.members.get(k, {}).values() and load[k] < self.capacity]
            key = same_shape[0] if same_shape else min(keys, key=lambda k: (load[k], k[2]))
        if key not in self.executors or not self._alive(key):
            self.executors[key] = self._start(key)
        return key

    def _cpu_slots(self, node_id: str) -> int:
        import ray

        cpus = next((n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node_id), 1)
        return max(1, int(cpus // self.cpus_per_trial))

    def _start(self, key: tuple):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from tunefm.executor import Executor

        node_id, kind, slot = key
        self.started += 1
        name = f"tunefm-executor-{self.run_name}-{os.getpid()}-{self.started}"
        node_ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id), "")
        facts = {"node_id": node_id, "node_ip": node_ip, "gpu_ids": "" if kind == "cpu" else str(slot)}
        actor = ray.remote(Executor).options(
            name=name, num_cpus=0, num_gpus=0, max_concurrency=4 * self.capacity + 16,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        # The executor finds the device of Ray's GPU id itself: it runs on that GPU's node, which
        # may not be this coordinator's.
        return actor.remote(self.arrays_ref, kind, self.threads, self.loop, self.fuse, self.capacity,
                            self.max_epochs, name, facts, gpu_id=None if kind == "cpu" else str(slot))


@dataclass
class Running:
    name: str
    handle: object
    arrays_ref: object  # kept alive as long as the search runs


def start(run_name: str, arrays: dict, settings, decision: Decision, max_epochs: int) -> Running:
    """The coordinator of this search (a named Ray actor), its data in the object store once."""
    import ray

    name = f"tunefm-coordinator-{run_name}-{os.getpid()}"
    ref = ray.put(arrays)
    handle = ray.remote(Coordinator).options(name=name, num_cpus=0, max_concurrency=64).remote(
        [ref], run_name, max(1, int(settings.cpus_per_trial)), settings.loop, settings.fuse, decision.capacity,
        max_epochs, settings.cpus_per_trial)
    return Running(name, handle, ref)


def stop(running: Running | None) -> None:
    """Kill the executors and the coordinator (a local Ray's shutdown would too; a cluster's would not)."""
    if running is None:
        return
    import ray

    try:
        ray.get(running.handle.shutdown.remote(), timeout=60)
        ray.kill(running.handle, no_restart=True)
    except Exception:  # Ray already shut down, or the coordinator already gone
        pass


def member_trainable_for(coordinator: str, cpus_per_trial: float, decision: Decision, on_gpus: bool):
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from tunefm.member import member_trainable

    bundle = member_resources(cpus_per_trial, decision.capacity, on_gpus)
    return tune.with_resources(tune.with_parameters(member_trainable, coordinator=coordinator),
                               PlacementGroupFactory([bundle]))


class Membership(Callback):
    """A Tune callback (on the driver) that takes a finished, stopped or failed trial out of its
    executor at once: the executor's next round does not wait for it. It holds the
    coordinator's name, not its handle: Tune pickles callbacks into the experiment state, and
    a resumed search unpickles them where that coordinator no longer exists."""

    def __init__(self, coordinator: str):
        self.coordinator = coordinator
        self._handle = None

    def __getstate__(self):
        return {"coordinator": self.coordinator, "_handle": None}

    def _leave(self, trial_id: str) -> None:
        import ray

        if self._handle is None:
            self._handle = ray.get_actor(self.coordinator)
        self._handle.leave.remote(trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._leave(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._leave(trial.trial_id)


def describe(decision: Decision) -> str:
    return f"Fusion: {'on' if decision.fuse else 'off'} ({decision.reason})"

