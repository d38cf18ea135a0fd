"""Fused execution on a Ray cluster: whether to fuse, what a fused trial asks of Ray, and
the coordinator that places its trials.

    decision = placement.decide("auto", study.configs(), cluster_has_gpus, 1, None, slots=2, cores=2)
    running = placement.start(run_name, arrays, settings, decision, max_epochs, trials)  # coordinator
    trainable = placement.member_trainable_for(running.name, 1, decision, decision.on_gpus)
    callbacks.append(placement.Membership(running.name))
    ...
    placement.stop(running)

Resources. Fused trials are accounted like fractional GPUs: a trial asks Ray for
1/capacity of a CPU slot (`--cpus-per-trial`), and of a GPU where trials use GPUs, each
share floored to Ray's unit so that `capacity` of them fit; Ray runs `capacity` trials per
slot or GPU, and for each slot or GPU one executor (`executor.py`, a Ray actor that asks for
nothing itself) trains them. The executors hold the data once per device; the trial
processes hold no data and no torch. The capacity spreads a study over the cluster: 16
trials on 2 CPU slots are 8 per slot, not 16 on one.

Placement (`coordinator.py`): the coordinator starts the CPU executors as the search starts
(a GPU's when its first trial lands), and sends each trial to the least loaded slot of its
node. When ASHA stops a trial, `Membership` (a Tune callback on the driver) tells its
executor at once, so the group never waits for it; an executor that died is replaced when
Tune retries its trials from their checkpoints (`--max-failures`).

Deciding (`--fuse auto`): where trials use GPUs, fuse (small nets leave a GPU mostly idle:
results/benchmarks/gpu-acceptance.md), also under a pinned --loop (the groups train with its
kernels; on CPUs a pinned loop keeps trials apart). On CPUs only, fuse if the whole study is estimated to
finish at least AUTO_MIN_SPEEDUP times faster (`fusion_cost.py`: the calibrated group gains
of its shapes, `calibrate.py`, against the start of every trial process a fused search adds),
at the group size per slot estimated fastest; for most shapes a CPU gains nothing from fusing.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import ray
import torch
from ray import tune
from ray.tune import Callback, PlacementGroupFactory

from tunefm.engine import calibrate, choices, fused, fusion_cost, training_plan
from tunefm.tune.coordinator import Coordinator
from tunefm.tune.member import member_trainable

GPU_CAPACITY = 16  # trials per GPU when fused (the largest group calibrated)
CPU_CAPACITY = 8  # trials per CPU slot for --fuse on (auto: the calibrated best)
AUTO_MIN_SPEEDUP = 1.2  # the whole study, CPU only: below this, auto keeps trials apart


@dataclass(frozen=True)
class Decision:
    fuse: bool
    capacity: int  # trials per CPU slot or GPU
    reason: str
    on_gpus: bool = False  # fused trials share GPUs (else CPU slots)

    def record(self) -> dict:
        return {"fuse": self.fuse, "capacity": self.capacity, "reason": self.reason, "on_gpus": self.on_gpus}


def shape_counts(configs: list[dict]) -> Counter:
    return Counter(fused.shape_key(c) for c in configs)


def decide(mode: str, configs: list[dict] | None, cluster_has_gpus: bool, cpus_per_trial: float,
           gpus_per_trial: float | None, group_size: int | None = None, train_images: int = 50_000,
           max_epochs: int = 100, loop: str = "auto", slots: int = 1, gpus: int = 1,
           cores: float | None = None) -> Decision:
    """Whether the study's trials train fused, and how many share a slot or GPU (`group_size`
    if given). `configs`: the grid's trials (None for a searcher that draws them as it goes);
    `train_images` and `max_epochs` size their work; `loop`: the search's --loop; `slots`,
    `gpus`, `cores`: the cluster's CPU slots (CPUs / --cpus-per-trial), GPUs and CPUs."""
    choices.check_fuse(mode)
    if mode == "off":
        return Decision(False, 1, "--fuse off")
    on_gpus = uses_gpus(cluster_has_gpus, gpus_per_trial)
    if mode == "auto" and loop != "auto" and not on_gpus:  # on CPUs fusing must be measured to pay, and
        # which trials share a group depends on timing, and so would the bits
        return Decision(False, 1, f"--loop {loop} pins how trials train, so on CPUs auto keeps them apart and a "
                                  f"run gives the same bits every time (--fuse on fuses anyway)")
    decision = _decide(mode, configs, cluster_has_gpus, cpus_per_trial, gpus_per_trial, train_images, max_epochs,
                   max(1, slots), max(1, gpus), cores or max(1, slots), loop, group_size)
    if decision.fuse and on_gpus and loop != "auto":  # a GPU idles without groups: the pin applies to their kernels
        decision = Decision(True, decision.capacity, f"{decision.reason}; each group trains with --loop {loop}'s "
                                                     f"kernels", on_gpus=True)
    return decision


def _sized(group_size: int, place: str, why: str, on_gpus: bool = False) -> Decision:
    """A fused decision at the size --group-size gives."""
    return Decision(True, group_size, f"{group_size} trials per {place}, as --group-size asks ({why})", on_gpus)


def spread(largest: int, trials: int | None, places: int) -> int:
    """Trials per slot or GPU: up to `largest`, but no more than spreading the study's trials
    evenly over its `places` needs (16 trials on 2 slots: 8 each, not 16 on one)."""
    if trials is None:
        return largest
    return max(2, min(largest, math.ceil(trials / places)))


def _decide(mode: str, configs: list[dict] | None, cluster_has_gpus: bool, cpus_per_trial: float,
            gpus_per_trial: float | None, train_images: int, max_epochs: int, slots: int, gpus: int,
            cores: float, loop: str = "auto", group_size: int | None = None) -> Decision:
    counts = shape_counts(configs) if configs is not None else None
    if counts is not None and max(counts.values(), default=0) < 2:
        return Decision(False, 1, "no two trials share a shape (model and options, batch size, optimizer, "
                                  "output), so there is nothing to fuse; every trial trains alone")
    trials = len(configs) if configs is not None else None
    if uses_gpus(cluster_has_gpus, gpus_per_trial):
        largest = int(1 / gpus_per_trial + 1e-9) if gpus_per_trial else GPU_CAPACITY
        if largest < 2:
            return Decision(False, 1, f"--gpus-per-trial {gpus_per_trial:g} leaves room for one trial per GPU")
        if group_size:
            return _sized(group_size, "GPU", "fused by shape", on_gpus=True)
        capacity = spread(largest, trials, gpus)
        return Decision(True, capacity, f"up to {capacity} trials per GPU, fused by shape", on_gpus=True)
    if mode == "on" and group_size:  # the size is given: nothing to measure
        return _sized(group_size, "CPU slot", "--fuse on")
    if mode == "on":  # each executor still picks the fastest measured group up to this size
        estimates = (_estimates_on_cpu(counts, configs, cpus_per_trial, train_images, max_epochs, slots, cores)
                     if counts is not None and loop == "auto" else None)
        fused_sizes = [e for e in estimates or [] if e.group_size > 1]
        if fused_sizes:  # fuse regardless, at the group size estimated fastest for this study
            fastest = fusion_cost.fastest(fused_sizes)
            return Decision(True, fastest.group_size, f"--fuse on: {fastest.group_size} trials per CPU slot, the "
                                                      f"group size estimated fastest here ({_figures(fastest)})")
        capacity = spread(CPU_CAPACITY, trials, slots)
        return Decision(True, capacity, f"--fuse on: up to {capacity} trials per CPU slot")
    if counts is None:
        return Decision(False, 1, "a searcher drawing trials one by one on CPUs: auto fuses only measured gains")
    estimates = _estimates_on_cpu(counts, configs, cpus_per_trial, train_images, max_epochs, slots, cores)
    if estimates is None:
        return Decision(False, 1, "no shape has enough training ahead to repay measuring whether fusing pays")
    best = fusion_cost.fastest(estimates)
    if best.speedup >= AUTO_MIN_SPEEDUP and best.group_size > 1:
        reason = f"the study is estimated {best.speedup:.2f}x faster fused here ({_figures(best)})"
        return _sized(group_size, "CPU slot", reason) if group_size else Decision(True, best.group_size, reason)
    fastest = fusion_cost.fastest([e for e in estimates if e.group_size > 1] or [best])
    return Decision(False, 1, f"fusing is estimated at {fastest.speedup:.2f}x for the whole study here at best "
                              f"({_figures(fastest)}; auto fuses from {AUTO_MIN_SPEEDUP:g}x)")


def _figures(estimate: fusion_cost.Estimate) -> str:
    return (f"{estimate.seconds_alone:.0f} s alone, {estimate.seconds_fused:.0f} s fused at {estimate.group_size} "
            f"per slot, the start of every trial process included")


def _plan_for(config: dict, threads: int, largest: int) -> calibrate.FusionPlan:
    """One shape's fusion plan on this machine's CPU (a pool worker's task)."""

    torch.set_num_threads(threads)
    return calibrate.fusion_plan(config, torch.device("cpu"), threads, largest=largest)


def shape_work(config: dict, trials: int, samples: float, threads: int) -> fusion_cost.ShapeWork:
    """A calibrated shape's figures for the whole-search estimate: its best solo loop's rate and
    the aggregate rate of each group size that beat it by calibrate.FUSION_MARGIN."""

    entry = calibrate.cached_entry(config, torch.device("cpu"), threads)
    solo_rate = entry["solo"][calibrate.best_solo(entry)]
    rates = {}
    for size, figures in entry.get("fused", {}).items():
        if calibrate.SKIPPED in figures or not calibrate.group_variants(figures):
            continue
        speedup = calibrate.group_speedup(figures, solo_rate)
        if speedup >= calibrate.FUSION_MARGIN:  # within the noise of a shared machine below this
            rates[int(size)] = solo_rate * speedup
    return fusion_cost.ShapeWork(trials, samples, solo_rate, rates)


def _estimates_on_cpu(counts: Counter, configs: list[dict], cpus_per_trial: float, train_images: int,
                      max_epochs: int, slots: int, cores: float) -> list[fusion_cost.Estimate] | None:
    """The whole study estimated alone (group size 1) and fused at each group size calibration
    measured a gain for (`fusion_cost.py`, the start of every process a fused search adds
    included); None where no shape can be measured. Measured: the shapes that could form groups
    (two trials or more, each with enough steps to repay measuring its loop, so that the solo
    loops measured here are ones its trials would measure anyway; cached). Shapes too short to
    measure count as neither. The shapes are measured side by side, one process per CPU slot,
    as trials would run."""

    threads = max(1, int(cpus_per_trial))
    example = {fused.shape_key(c): c for c in configs}
    steps, longest = Counter(), Counter()  # a shape's steps in all, and its longest trial's
    for config in configs:
        key, trial_steps = fused.shape_key(config), training_plan.training_steps(config, train_images, max_epochs)
        steps[key] += trial_steps
        longest[key] = max(longest[key], trial_steps)
    chosen = [key for key, n in counts.items() if n >= 2 and calibrate.worth_measuring(longest[key])]
    if not chosen:
        return None
    tasks = [(example[key], threads, min(max(calibrate.GROUP_SIZES), counts[key])) for key in chosen]
    cpu = torch.device("cpu")
    missing = [task for task in tasks if calibrate.cached_plan(task[0], cpu, threads, task[2]) is None]
    workers = min(len(missing), max(1, (os.cpu_count() or 1) // threads))
    if workers > 1:  # worker processes only to measure: starting them costs seconds
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.starmap(_plan_for, missing)
    else:
        for task in missing:
            _plan_for(*task)
    shapes = [shape_work(example[key], counts[key], steps[key] * int(example[key]["batch_size"]), threads)
              for key in chosen]
    starts = calibrate.start_costs()
    costs = fusion_cost.StartCosts(member_s=starts["member_s"], trainer_s=starts["trainer_s"])
    return fusion_cost.estimates(shapes, slots, cores, costs, largest=max(calibrate.GROUP_SIZES))


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


@dataclass
class Running:
    name: str
    handle: object
    arrays_ref: object  # kept alive as long as the search runs


def start(run_name: str, arrays: dict, settings, decision: Decision, max_epochs: int,
          trials: int | None = None, shape_trials: Mapping | None = None) -> Running:
    """The coordinator of this search (a named Ray actor), its data in the object store once.
    `shape_trials`: a grid's trials per shape (`shape_counts`), so that no executor measures a
    group larger than a shape can fill (None where a searcher draws trials as it goes)."""

    name = f"tunefm-coordinator-{run_name}-{os.getpid()}"
    ref = ray.put(arrays)
    handle = ray.remote(Coordinator).options(name=name, num_cpus=0, max_concurrency=64).remote(
        [ref], run_name, max(1, int(settings.cpus_per_trial)), settings.loop, settings.fuse, decision.capacity,
        max_epochs, settings.cpus_per_trial, dict(shape_trials or {}))
    if not decision.on_gpus:  # started while Tune starts the trials; a GPU's executor waits for its first trial
        handle.prestart.remote(math.ceil(trials / decision.capacity) if trials else 1 << 30)
    return Running(name, handle, ref)


def stop(running: Running | None) -> None:
    """Kill the executors and the coordinator (a local Ray's shutdown would too; a cluster's would not)."""
    if running is None:
        return

    try:
        ray.get(running.handle.shutdown.remote(), timeout=60)
        ray.kill(running.handle, no_restart=True)
    except Exception:  # Ray already shut down, or the coordinator already gone
        pass


def member_trainable_for(coordinator: str, cpus_per_trial: float, decision: Decision, on_gpus: bool,
                         tune_dir: str | None = None, resume_at: Mapping[str, int] | None = None):
    bundle = member_resources(cpus_per_trial, decision.capacity, on_gpus)
    trainable = tune.with_parameters(member_trainable, coordinator=coordinator, tune_dir=tune_dir,
                                     resume_at=resume_at)
    return tune.with_resources(trainable, PlacementGroupFactory([bundle]))


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
        if self._handle is None:
            self._handle = ray.get_actor(self.coordinator)
        self._handle.leave.remote(trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._leave(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._leave(trial.trial_id)


def describe(decision: Decision) -> str:
    return f"Fusion: {'on' if decision.fuse else 'off'} ({decision.reason})"

