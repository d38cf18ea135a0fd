"""Training speed, peak memory and trial packing per model and batch size: the library behind `tunefm bench`.

    machine = bench.Machine.here(torch.device("cpu"))
    rows = bench.measure(["iaro1", "iaro2"], [8, 32, 256], machine)
    rows[0].samples_per_s, rows[0].peak_mb, rows[0].trial_mb
    packings = bench.advise(rows, machine)

Each (model, batch size) runs what a trial runs: tunefm's training loop
(`training.train_epoch` on the model `training.init_state` builds, with its CPU
kernels) on real Fashion-MNIST images held on the device, for about `seconds`, then
one evaluation of a validation slice in `training.EVAL_BATCH_SIZE` batches.

Memory, per row:
  - `peak_mb`: CUDA's max allocated on a GPU; the process's peak resident set (VmHWM,
    reset before each row) on CPU;
  - `model_mb`: the part of the peak above what was held before the model existed:
    weights, gradients, optimizer state, training and evaluation activations;
  - `trial_mb`: one trial's footprint: `model_mb`, plus its own copy of the data splits
    as float tensors (a trial keeps them on its device), plus the per-process base
    (the CUDA context on a GPU; Python with torch loaded on CPU).

Packing: how many trials of one model and batch size can share a device, the
fewest allowed by
  - memory:  usable device memory (90%) // trial_mb;
  - compute: on a GPU, 1 / busy, where busy is the share of a training step's wall
    time that the GPU spends in kernels (torch.profiler); a small net at a small batch
    leaves the GPU idle while Python launches the next kernel, and other trials'
    kernels fill those gaps until the GPU is busy all the time;
  - CPU:     cores per device // CPUs per trial: every trial needs a core to drive it.
The GPU fraction to ask for is 1 / trials. Ray does not give this advice: it packs
whatever fractions it is told.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import resource
import time
from dataclasses import asdict, dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from tunefm.engine import data, devices, fused, loops, models, training, training_plan
from tunefm.errors import UserError

MB = 2**20
DEFAULT_MODELS = ("iaro1", "iaro2", "iaro3", "iaro4")
DEFAULT_BATCH_SIZES = (8, 32, 256)
TRIAL_IMAGES = 50_000 + data.DEFAULT_VAL_SIZE  # a search's default train + val split
USABLE_MEMORY = 0.9  # leave room for the allocator's fragmentation and other processes
PROFILE_STEPS = 20  # training steps profiled for the GPU's busy share


@dataclass(frozen=True)
class Machine:
    """What one device offers to trials."""

    device: str  # "cpu" | "cuda"
    name: str
    memory_mb: float  # the GPU's memory, or the machine's
    cores_per_device: int
    cpus_per_trial: float = 1.0
    context_mb: float = 0.0  # a process's CUDA context (0 on CPU)

    @staticmethod
    def here(device: torch.device, cpus_per_trial: float = 1.0) -> "Machine":
        cores = os.cpu_count() or 1
        if device.type == "cuda":
            free, total = devices.memory(device)  # creates this process's context first
            return Machine("cuda", devices.name(device), total / MB,
                           max(1, cores // devices.count()), cpus_per_trial,
                           context_mb=(total - free) / MB)  # only the context, if nothing else uses the GPU
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return Machine("cpu", cpu_name(), total / MB, cores, cpus_per_trial)

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Row:
    model: str
    batch_size: int
    device: str
    samples: int  # training images timed
    samples_per_s: float
    peak_mb: float
    model_mb: float
    data_mb: float  # a trial's data splits on its device
    base_mb: float  # per process: the CUDA context, or Python with torch on CPU
    trial_mb: float
    gpu_busy: float | None  # share of step time in GPU kernels; None on CPU
    loop: str = "plain"  # the training loop timed (loops.py)

    def record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Packing:
    model: str
    batch_size: int
    by_memory: int
    by_compute: int | None  # None on CPU: threads, not kernels, share a core
    by_cpu: int
    trials: int
    limit: str  # what sets `trials`: memory, compute or cpu
    gpu_fraction: float | None  # None on CPU, or where not even one trial fits

    def record(self) -> dict:
        return asdict(self)


cpu_name = devices.cpu_name


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def resident_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: "5" > /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else resident_mb()


def split_mb(images: int) -> float:
    """Bytes a trial holds for `images` on its device: float (1, 28, 28) images and int64 labels."""
    return images * (28 * 28 * 4 + 8) / MB


def resolve_device(name: str | None) -> torch.device:
    if name not in (None, "cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda" and not devices.cuda_available():
        raise UserError("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); "
                        "use --device cpu")
    return torch.device(name or ("cuda" if devices.cuda_available() else "cpu"))


def check(model_names: list[str], batch_sizes: list[int], seconds: float) -> None:
    for name in model_names:
        models.get(name)  # UserError listing the valid models
    for batch_size in batch_sizes:
        if batch_size < 1:
            raise UserError(f"--batch-sizes must be integers >= 1, got {batch_size}")
    if not seconds > 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")


sync = devices.synchronize


def release_freed_memory(device: torch.device) -> None:
    """Give freed memory back (the CUDA cache; glibc's free lists), so that the next
    row's peak counts what it allocates, not what an earlier row left cached."""
    gc.collect()
    if device.type == "cuda":
        devices.empty_cache(device)
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: peaks may then undercount
        pass


def _reset_peak(device: torch.device) -> float:
    """Start a new peak window; returns what is held now, in MB."""
    release_freed_memory(device)
    if device.type == "cuda":
        return devices.reset_peak(device) / MB
    reset_peak_rss()
    return resident_mb()


def _peaks(device: torch.device) -> tuple[float, float]:
    """(peak as reported, peak as held), in MB: CUDA max allocated and max reserved; on CPU both peak RSS."""
    if device.type == "cuda":
        allocated, reserved = devices.peaks(device)
        return allocated / MB, reserved / MB
    peak = peak_rss_mb()
    return peak, peak


def gpu_busy_share(run, device: torch.device) -> float | None:
    """Share of `run()`'s wall time the GPU spends in kernels (None on CPU)."""
    if device.type != "cuda":
        return None

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        run()
        sync(device)
        wall_us = (time.perf_counter() - started) * 1e6
    # Kernels are the events on the device; CPU ops carry their kernels' time too, so they are
    # left out (as torch.profiler's own table totals it).
    kernels_us = sum(e.self_device_time_total for e in prof.key_averages()
                     if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    return min(1.0, kernels_us / wall_us) if wall_us > 0 else None


def measure_one(name: str, batch_size: int, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor,
                val_y: torch.Tensor, machine: Machine, seconds: float, base_mb: float, trial_images: int,
                loop: str = loops.AUTO) -> Row:
    """Time tunefm's loop (`loop`: a fixed one, or auto: calibration's choice) for one model and
    batch size on (x, y), already on the device."""
    device = torch.device(machine.device)
    config = {"model": name, "lr": 0.001, "batch_size": batch_size}  # small lr: stays finite
    loop = training_plan.solo_loop(loop, config, device)  # before the peak window: calibration allocates
    held_before = _reset_peak(device)
    state = training.init_state(config, device, loop)
    if loop == "captured":
        group = fused.FusedGroup(device, capture=True)
        group.add(config)

    def train(images: int) -> None:
        if loop == "captured":
            group.train_epoch(x[:images], y[:images])
            return
        with loops.kernels(loop):
            training.train_epoch(state.model, state.optimizer, x[:images], y[:images], batch_size, state.generator)

    warm = min(len(y), batch_size * 5)
    train(warm)  # first calls: kernels, allocator
    per_image = devices.timed(lambda: train(warm), device) / warm
    images = int(min(len(y), max(batch_size * 3, seconds / per_image)))
    rate = images / devices.timed(lambda: train(images), device)
    training.evaluate(state.model, val_x, val_y)  # its large batches can set the peak
    sync(device)
    peak, held_peak = _peaks(device)
    busy = gpu_busy_share(lambda: train(min(len(y), batch_size * PROFILE_STEPS)), device)
    model_mb = max(0.0, held_peak - held_before)
    data_mb = split_mb(trial_images)
    return Row(name, batch_size, device.type, images, round(rate, 1), round(peak, 1), round(model_mb, 1),
               round(data_mb, 1), round(base_mb, 1), round(model_mb + data_mb + base_mb, 1),
               None if busy is None else round(busy, 3), loop)


def measure(model_names: list[str], batch_sizes: list[int], machine: Machine, seconds: float = 2.0,
            data_dir: str | None = None, bench_images: int = 10_000, trial_images: int = TRIAL_IMAGES,
            on_row=None, loop: str = loops.AUTO) -> list[Row]:
    """One `Row` per model and batch size, timed with as many torch threads as a trial
    gets CPUs. `trial_images`: a trial's train + val images, for its data footprint."""
    check(model_names, batch_sizes, seconds)
    torch.set_num_threads(max(1, int(machine.cpus_per_trial)))
    device = torch.device(machine.device)
    splits = data.load(data_dir, train_size=bench_images, val_size=training.EVAL_BATCH_SIZE, test_size=10)
    x, y = training.to_tensors(splits.train_x, splits.train_y, device)
    val_x, val_y = training.to_tensors(splits.val_x, splits.val_y, device)
    # One untimed row first: the libraries' one-time set-up (oneDNN, cuBLAS, the allocator)
    # then belongs to no row's peak.
    measure_one(model_names[0], batch_sizes[0], x, y, val_x, val_y, machine, 0.01, 0.0, trial_images, loop)
    release_freed_memory(device)
    # A process's own share, without this benchmark's data: the CUDA context, or Python with torch.
    base_mb = machine.context_mb if device.type == "cuda" else resident_mb() - split_mb(len(y) + len(val_y))
    rows = []
    for name in model_names:
        for batch_size in batch_sizes:
            rows.append(measure_one(name, batch_size, x, y, val_x, val_y, machine, seconds, base_mb, trial_images,
                                    loop))
            if on_row:
                on_row(rows[-1])
    return rows


def pack(row: Row, machine: Machine) -> Packing:
    """How many trials like `row` fit on one of `machine`'s devices, and what limits it."""
    usable = machine.memory_mb * USABLE_MEMORY
    by_memory = max(0, int(usable // row.trial_mb)) if row.trial_mb > 0 else 1
    by_compute = None
    if row.gpu_busy is not None:
        by_compute = max(1, math.floor(1 / row.gpu_busy)) if row.gpu_busy > 0 else by_memory
    by_cpu = max(1, int(machine.cores_per_device // machine.cpus_per_trial))
    limits = {"memory": by_memory, "cpu": by_cpu}
    if by_compute is not None:
        limits["compute"] = by_compute
    limit = min(limits, key=limits.get)
    trials = limits[limit]
    fraction = round(1 / trials, 4) if machine.device == "cuda" and trials >= 1 else None
    return Packing(row.model, row.batch_size, by_memory, by_compute, by_cpu, trials, limit, fraction)


def advise(rows: list[Row], machine: Machine) -> list[Packing]:
    return [pack(row, machine) for row in rows]


def per_model(packings: list[Packing]) -> dict[str, Packing]:
    """Each model's tightest packing over its batch sizes: a search gives one fraction per model."""
    tightest: dict[str, Packing] = {}
    for p in packings:
        if p.model not in tightest or p.trials < tightest[p.model].trials:
            tightest[p.model] = p
    return tightest
