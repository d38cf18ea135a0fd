"""Choose how to train each shape of trial by measuring the candidates on this machine, and remember it.

    loop = calibrate.choose_loop(config, torch.device("cpu"), threads=1)     # "channels_last", say
    plan = calibrate.fusion_plan(config, device, threads=1, largest=16)      # group size and kernels
    calibrate.cached()                                                       # everything measured here
    calibrate.refresh(["iaro1"], [8, 256], device, threads=1)                # measure again (bench --refresh)

A shape is what decides a training step's cost: the model and its options, the batch size,
the optimizer and the output (`fused.shape_key`, less nothing). For a shape, calibration
times a few training steps of every candidate, interleaved over several rounds so that
background noise hits them alike, on random tensors (speed does not depend on the pixels),
and keeps each candidate's best round:
  - solo loops (`loops.CANDIDATES`): plain, channels_last, native_conv on CPU; plain and
    captured on CUDA;
  - fused groups (`fused.FusedGroup`) of 2, 4, 8 and 16 members: with and without oneDNN on
    CPU, eager and captured on CUDA; their aggregate samples/s over all members, timed in
    the same rounds as the shape's best solo loop (kept as the size's "solo" figure). A
    shared machine's speed drifts from second to second, so a group's gain is the median,
    over rounds, of its speed over the solo loop's in the same round, never a group's rate
    over a solo rate measured at another time.
It takes about a second per shape for small nets, is done once per machine and shape, and is
kept in `$TUNEFM_CACHE_DIR/calibration.json` (default `~/.cache/tunefm/`), keyed by the CPU or
GPU model, the torch version and the thread count, so every trial on the machine reuses it.
A lock per shape makes concurrent trials wait for one measurement of it instead of each
making its own; different shapes are measured side by side.

A shape's loop is decided once per machine and kept (the entry's "loop"): measured, or, for a
trial too short to repay a measurement, borrowed from the nearest batch size measured then
(else `plain`). Loops agree only to float rounding, so a decision that followed whatever
happened to be measured at the moment a trial started would train the same configuration
differently from one search to the next. Every later trial of the shape, short or long,
trains in the recorded loop until `tunefm bench --refresh` measures the shape again.
Calibration never touches the trial's random streams (it runs inside `torch.random.fork_rng`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from tunefm.engine import devices, fused, loops, models, training

CACHE_ENV = "TUNEFM_CACHE_DIR"
CACHE_FILE = "calibration.json"
GROUP_SIZES = (2, 4, 8, 16)
ROUNDS = 5  # interleaved rounds per candidate; the best round counts
ROUND_SECONDS = 0.05  # target duration of one candidate's round
PLAIN_MARGIN = 1.03  # another loop replaces PyTorch's defaults only if measured this much faster
MAX_ROUND_STEPS = 40
# Fused must beat solo by this much to be chosen. On a shared (virtual) machine the ratio of a
# group's speed to a solo trial's drifts with the neighbours' load (one plan measured 1.31x and
# 1.04x `--fuse off` in two rows of packing-cpu.md, a minute apart), so only a large gain is safe.
FUSION_MARGIN = 1.25
# Fusing amortizes a step's fixed cost (Python, kernel launches: about a millisecond on a CPU
# core) over its members; where one solo step already takes this long, that cost is a small
# part of it and groups are not measured on CPU. (On this project's machine no shape whose solo
# step took over 5 ms gained more from fusing than that benchmark's own noise: packing-cpu.md.)
FUSION_MAX_STEP_S = 0.005
SKIPPED = "skipped"
REFERENCE = "solo"  # in a group size's figures: the best solo loop, timed in the same rounds
# Measuring a big net's loops costs about 20 of its training steps (three loops, each a
# warm-up and five rounds of one step), and the best loop saves 0-25% of its steps (up to 50%
# for the tiny nets, whose rounds are many cheap steps); below this many steps ahead (with
# nothing cached) it does not pay, and the trial trains with PyTorch's defaults.
WORTH_MEASURING_STEPS = 200


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/tunefm").expanduser()


device_name = devices.name


def machine_key(device: torch.device, threads: int) -> str:
    """What the measurements depend on besides the shape."""
    return f"{device.type}: {device_name(device)} | torch {torch.__version__} | {threads} thread(s)"


def shape_id(config: dict) -> str:
    """A readable key for the shape: 'iaro1 batch=32 optimizer=sgd output=softmax'."""
    items = dict(fused.shape_key(config))
    model, batch = items.pop("model"), items.pop("batch_size")
    return " ".join([model, f"batch={batch}"] + [f"{k}={v}" for k, v in sorted(items.items())])


# ---- the cache ------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


@contextlib.contextmanager
def locked_cache():
    """The cache's contents under an exclusive lock; what the block leaves in the dict is written back."""
    folder = cache_dir()
    path = folder / CACHE_FILE
    with _file_lock(folder / (CACHE_FILE + ".lock")):
        contents = read_cache(path)
        before = json.dumps(contents, sort_keys=True)
        yield contents
        if json.dumps(contents, sort_keys=True) != before:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)  # readers never see half a file


def read_cache(path: Path | None = None) -> dict:
    path = path or cache_dir() / CACHE_FILE
    try:
        contents = json.loads(path.read_text())
        return contents if isinstance(contents, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: measure again
        return {}


def cached() -> dict:
    """{machine key: {shape id: entry}} of everything measured with this cache."""
    return read_cache()


def forget(machine: str | None = None) -> int:
    """Drop the entries of one machine key (or all); returns how many shapes were dropped."""
    with locked_cache() as contents:
        keys = [machine] if machine else list(contents)
        dropped = sum(len(contents.pop(k, {})) for k in keys)
    return dropped


# ---- process start-up -----------------------------------------------------------------------
STARTUP_FILE = "startup.json"
STARTUP_IMPORTS = {"member_s": "ray.tune", "trainer_s": "torch"}  # what each kind of process imports


def _import_cpu_seconds(module: str) -> float:
    """CPU-seconds (user + system) a fresh Python spends importing `module`: what a process that
    needs it costs the node's cores, whatever else they are doing."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def start_costs(refresh: bool = False) -> dict[str, float]:
    """{"member_s": CPU-seconds to start a process that imports Tune, "trainer_s": one that
    imports torch}, measured once per machine and Python environment (a few seconds), then cached."""
    key = f"{devices.cpu_name()} | {sys.executable} | torch {torch.__version__}"
    path = cache_dir() / STARTUP_FILE
    with _file_lock(cache_dir() / (STARTUP_FILE + ".lock")):
        contents = read_cache(path)
        if key not in contents or refresh:
            contents[key] = {name: round(_import_cpu_seconds(module), 3) for name, module in STARTUP_IMPORTS.items()}
            contents[key]["measured_at"] = _now()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(contents, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
    return {name: contents[key][name] for name in STARTUP_IMPORTS}


# ---- measuring ------------------------------------------------------------------------------
class _Candidate:
    """One way to train: `run(steps)` trains that many batches of `samples_per_step` images."""

    def __init__(self, name: str, run, samples_per_step: int):
        self.name, self.run, self.samples_per_step = name, run, samples_per_step
        self.rounds: list[float] = []  # seconds per step, round by round
        self.steps = 1

    @property
    def samples_per_s(self) -> float:
        """The best round's (noise only ever adds time)."""
        return round(self.samples_per_step / min(self.rounds), 1)

    def median_speedup_over(self, other: "_Candidate") -> float:
        """The median over rounds of this candidate's samples/s over `other`'s in the same round:
        a burst of load that hits one round of one candidate moves a best-of figure, not this."""
        ratios = sorted((self.samples_per_step / mine) / (other.samples_per_step / theirs)
                        for mine, theirs in zip(self.rounds, other.rounds))
        middle = len(ratios) // 2
        return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def _inputs(batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels for MAX_ROUND_STEPS batches: a step's cost does not depend on the pixels."""
    generator = torch.Generator().manual_seed(0)
    n = batch_size * MAX_ROUND_STEPS
    return (torch.randn(n, 1, 28, 28, generator=generator).to(device),
            torch.randint(0, 10, (n,), generator=generator).to(device))


def _solo(config: dict, loop: str, device: torch.device, x, y) -> _Candidate:
    batch_size = int(config["batch_size"])
    if loop == "captured":
        group = fused.FusedGroup(device, capture=True)
        group.add(config)
        return _Candidate(loop, lambda steps: group.train_epoch(x, y, steps), batch_size)
    state = training.init_state(config, device, loop)

    def run(steps: int) -> None:
        with loops.kernels(loop):
            training.train_epoch(state.model, state.optimizer, x[:steps * batch_size], y[:steps * batch_size],
                                  batch_size, state.generator)
    return _Candidate(loop, run, batch_size)


def _fused(config: dict, size: int, variant: str, device: torch.device, x, y) -> _Candidate:
    group = fused.FusedGroup(device, capture=variant == "captured", onednn=variant != "native_conv")
    for seed in range(size):
        group.add({**config, "seed": seed})
    return _Candidate(f"{variant}", lambda steps: group.train_epoch(x, y, steps), int(config["batch_size"]) * size)


def _time(candidates: list[_Candidate], device: torch.device) -> None:
    """Each candidate's seconds per step in ROUNDS interleaved rounds, after a warm-up (and
    capture). A round of several steps starts with one untimed step, so a candidate does not
    pay for the caches the one before it emptied (a round of one long step hardly notices)."""
    for c in candidates:
        warm = fused.WARM_STEPS + 2 if "captured" in c.name else 1  # a captured one captures and replays in it
        c.run(warm)
        per_step = devices.timed(lambda: c.run(warm), device) / warm
        c.steps = max(1, min(MAX_ROUND_STEPS, round(ROUND_SECONDS / max(per_step, 1e-6))))
    for _ in range(ROUNDS):
        for c in candidates:
            if c.steps > 1:
                c.run(1)
            c.rounds.append(devices.timed(lambda: c.run(c.steps), device) / c.steps)


def _calibration_config(config: dict) -> dict:
    """The shape's keys only, a small lr (every candidate stays finite) and the default init."""
    shape = {k: v for k, v in config.items() if k not in fused.PER_MEMBER_KEYS}
    return {**shape, "lr": 1e-4}


def measure_solo(config: dict, device: torch.device) -> dict[str, float]:
    """{loop: samples/s} of every solo loop for config's shape on `device`."""
    config = _calibration_config(config)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x, y = _inputs(int(config["batch_size"]), device)
        candidates = [_solo(config, loop, device, x, y) for loop in loops.CANDIDATES.get(device.type, ("plain",))]
        _time(candidates, device)
    return {c.name: c.samples_per_s for c in candidates}


def fusable(config: dict) -> bool:
    """Whether config's model has a grouped form (`fused.GroupedForward`)."""
    spec = models.get(config["model"])
    with torch.random.fork_rng(devices=[]):  # building the model draws its init
        try:
            fused.GroupedForward(spec.build({k: v for k, v in config.items() if k in spec.options}))
        except fused.NotFusable:
            return False
    return True


def measure_fused(config: dict, device: torch.device, size: int, solo_loop: str = "plain") -> dict[str, float]:
    """{variant: aggregate samples/s} of a fused group of `size` members of config's shape, and
    {REFERENCE: samples/s} of one trial in `solo_loop`, timed in the same interleaved rounds.
    A variant's figure is the reference's times its median speedup over it, round by round."""
    config = _calibration_config(config)
    variants = ("plain", "captured") if device.type == "cuda" else ("plain", "native_conv")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x, y = _inputs(int(config["batch_size"]), device)
        candidates = [_fused(config, size, variant, device, x, y) for variant in variants]
        reference = _solo(config, solo_loop, device, x, y)
        _time(candidates + [reference], device)
    return {**{c.name: round(reference.samples_per_s * c.median_speedup_over(reference), 1) for c in candidates},
            REFERENCE: reference.samples_per_s}


def group_variants(figures: dict) -> dict[str, float]:
    """{variant: aggregate samples/s} of one group size's figures (without the solo reference)."""
    return {k: v for k, v in figures.items() if k not in (SKIPPED, REFERENCE)}


def group_speedup(figures: dict, solo_rate: float) -> float:
    """A group size's best aggregate over one solo trial: over the solo loop timed in the same
    rounds where there is one (entries of older caches: over `solo_rate`)."""
    rates = group_variants(figures)
    return max(rates.values(), default=0.0) / figures.get(REFERENCE, solo_rate)


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@contextlib.contextmanager
def _threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sizes(config: dict, group_sizes) -> list[str]:
    return [str(s) for s in group_sizes] if group_sizes and fusable(config) else []


def _complete(entry: dict | None, sizes: list[str]) -> bool:
    return bool(entry) and "solo" in entry and all(s in entry.get("fused", {}) for s in sizes)


def entry_for(config: dict, device: torch.device, threads: int, group_sizes=(), refresh: bool = False) -> dict:
    """The cached measurements of config's shape here: its solo loops, and the fused groups of
    `group_sizes` (each measured now if missing, or all if `refresh`)."""
    key, shape = machine_key(device, threads), shape_id(config)
    sizes = _sizes(config, group_sizes)
    complete = lambda e: _complete(e, sizes)
    found = read_cache().get(key, {}).get(shape)
    if complete(found) and not refresh:
        return found
    # One process measures a shape at a time (others wait for its figures); different shapes
    # are measured side by side, each process on its own cores, as trials run.
    lock = cache_dir() / "locks" / (hashlib.sha1(f"{key}|{shape}".encode()).hexdigest()[:16] + ".lock")
    with _file_lock(lock), _threads(threads):
        found = read_cache().get(key, {}).get(shape)
        if complete(found) and not refresh:
            return found
        entry = {} if refresh else dict(found or {})
        if "solo" not in entry:
            entry["solo"] = measure_solo(config, device)
        entry.setdefault("fused", {})
        solo_loop = best_solo(entry)
        solo_rate = entry["solo"][solo_loop]
        solo_step_s = int(config["batch_size"]) / max(entry["solo"].values())
        previous = 0.0  # the speedup of the last size measured
        for size in sizes:  # ascending: a group no faster than the size before it ends the search
            if size in entry["fused"]:
                if SKIPPED not in entry["fused"][size]:
                    previous = group_speedup(entry["fused"][size], solo_rate)
                continue
            if solo_step_s > FUSION_MAX_STEP_S and device.type == "cpu":
                entry["fused"][size] = {SKIPPED: f"a solo step takes {solo_step_s * 1e3:.0f} ms"}
            elif any(SKIPPED in v for v in entry["fused"].values()):
                entry["fused"][size] = {SKIPPED: "a smaller group was no faster than the one before it"}
            else:
                entry["fused"][size] = measure_fused(config, device, int(size), solo_loop)
                fastest = group_speedup(entry["fused"][size], solo_rate)
                if fastest <= previous:
                    for larger in sizes[sizes.index(size) + 1:]:
                        entry["fused"].setdefault(larger, {SKIPPED: "a smaller group was no faster than the one "
                                                                    "before it"})
                previous = fastest
        entry["measured_at"] = _now()
        with locked_cache() as contents:
            recorded = contents.get(key, {}).get(shape) or {}
            if refresh or "loop" not in recorded:
                entry.update(loop=best_solo(entry), loop_from="measured")
            else:  # decided while this measurement ran (a short trial's borrowed loop): it stays
                entry.update(loop=recorded["loop"], loop_from=recorded.get("loop_from", "measured"))
            contents.setdefault(key, {})[shape] = entry
        return entry


# ---- choosing -------------------------------------------------------------------------------
def best_solo(entry: dict) -> str:
    """The fastest loop, where it beats `plain` by PLAIN_MARGIN (within calibration's noise a
    different loop could be the slower one, and plain is the reference a trial must not lose to)."""
    rates = entry["solo"]
    best = max(rates, key=rates.get)
    return best if "plain" not in rates or rates[best] >= PLAIN_MARGIN * rates["plain"] else "plain"


def decided_loop(entry: dict) -> str:
    """The loop the entry's shape trains in: the one recorded when it was decided (caches from
    before the record: the measured best)."""
    return entry.get("loop") or best_solo(entry)


def is_decided(entry: dict | None) -> bool:
    return bool(entry) and ("loop" in entry or "solo" in entry)


def record_loop(config: dict, device: torch.device, threads: int, loop: str, source: str) -> str:
    """Record `loop` as the decision for config's shape unless one was recorded first (by a
    trial that started at the same time); returns the decision that stands."""
    key, shape = machine_key(device, threads), shape_id(config)
    with locked_cache() as contents:
        entry = contents.setdefault(key, {}).setdefault(shape, {})
        if not is_decided(entry):
            entry.update(loop=loop, loop_from=source, decided_at=_now())
        return decided_loop(entry)


def cached_entry(config: dict, device: torch.device, threads: int) -> dict | None:
    return read_cache().get(machine_key(device, threads), {}).get(shape_id(config))


def worth_measuring(steps: int | None) -> bool:
    """Whether `steps` training steps repay a calibration (None: unknown, assume they do)."""
    return steps is None or steps >= WORTH_MEASURING_STEPS


def borrowed_loop(config: dict, device: torch.device, threads: int | None) -> tuple[str, str] | None:
    """On CPU, the loop measured here for the same model and options at the nearest batch size
    (a layout that wins at batch 128 wins at 256 too, as a rule) and where it comes from
    ('borrowed from batch=128'), or None if there is none. `threads` None: measured with any
    thread count."""
    if device.type != "cpu":
        return None  # a captured graph's gain depends too much on the batch to borrow
    mine = shape_id(config).split()  # [model, "batch=N", other keys...]
    here = machine_key(device, threads or 1).rsplit("|", 1)[0]  # the machine less its thread count
    entries = [(shape, entry) for key, shapes in read_cache().items()
               if key == machine_key(device, threads or 1) or (threads is None and key.startswith(here))
               for shape, entry in shapes.items()]
    nearest = None
    for shape, entry in entries:
        theirs = shape.split()
        if theirs[:1] + theirs[2:] != mine[:1] + mine[2:] or "solo" not in entry:
            continue
        distance = abs(math.log(int(theirs[1].split("=")[1]) / int(config["batch_size"])))
        if nearest is None or distance < nearest[0]:
            nearest = (distance, best_solo(entry), f"borrowed from {theirs[1]}")
    return nearest[1:] if nearest else None


def choose_loop(config: dict, device: torch.device, threads: int | None = None, steps: int | None = None) -> str:
    """The loop decided for config's shape on this machine: the fastest measured, decided once
    and then kept. The first trial of a shape with fewer than WORTH_MEASURING_STEPS `steps`
    borrows the loop of the nearest batch size measured (`borrowed_loop`), else `plain`, and
    that is the shape's decision from then on."""
    threads = threads or torch.get_num_threads()
    found = cached_entry(config, device, threads)
    if is_decided(found):
        return decided_loop(found)
    if not worth_measuring(steps):
        borrowed = borrowed_loop(config, device, threads)
        return record_loop(config, device, threads, *(borrowed or ("plain", "default (too short to measure)")))
    return decided_loop(entry_for(config, device, threads))


def evaluation_layout(config: dict, device: torch.device, batch_size: int) -> str:
    """The layout the test evaluation runs a model in: on CPU the loop decided for its batches
    (`batch_size`) at this thread count, decided once like a trial's (borrowed from the
    nearest batch size measured at any thread count: channels-last or plain); else plain."""
    if device.type != "cpu":
        return "plain"
    big_batches = {**config, "batch_size": batch_size}
    threads = torch.get_num_threads()
    found = cached_entry(big_batches, device, threads)
    if is_decided(found):
        loop = decided_loop(found)
    else:
        loop, source = borrowed_loop(big_batches, device, threads=None) or ("plain", "default (nothing to borrow)")
        loop = record_loop(big_batches, device, threads, "channels_last" if loop == "channels_last" else "plain",
                           source)
    return "channels_last" if loop == "channels_last" else "plain"


@dataclass(frozen=True)
class FusionPlan:
    """How to train up to `largest` trials of one shape on one device."""

    group_size: int  # members trained together; 1: each trial alone
    variant: str  # the fused group's kernels (plain | native_conv | captured), or the solo loop at 1
    samples_per_s: float  # aggregate, as calibrated
    solo_samples_per_s: float

    @property
    def speedup(self) -> float:
        return self.samples_per_s / self.solo_samples_per_s


def plan_from(entry: dict, largest: int) -> FusionPlan:
    """The best group size up to `largest` (1 unless fusing beats the best solo loop by FUSION_MARGIN).
    A group's aggregate is the solo loop's rate times the group's speedup over it."""
    loop = best_solo(entry)
    solo_rate = entry["solo"][loop]
    best = FusionPlan(1, loop, solo_rate, solo_rate)
    for size, options in entry.get("fused", {}).items():
        rates = group_variants(options)
        if int(size) > largest or SKIPPED in options or not rates:
            continue
        variant = max(rates, key=rates.get)
        rate = solo_rate * group_speedup(options, solo_rate)
        if rate > best.samples_per_s * (FUSION_MARGIN if best.group_size == 1 else 1.0):
            best = FusionPlan(int(size), variant, rate, solo_rate)
    return best


def cached_plan(config: dict, device: torch.device, threads: int, largest: int) -> FusionPlan | None:
    """`fusion_plan` from the cache alone; None where something is still to be measured."""
    entry = cached_entry(config, device, threads)
    sizes = _sizes(config, [s for s in GROUP_SIZES if s <= largest])
    return plan_from(entry, largest) if _complete(entry, sizes) else None


def fusion_plan(config: dict, device: torch.device, threads: int | None = None,
                largest: int = max(GROUP_SIZES)) -> FusionPlan:
    """How to train up to `largest` trials of config's shape here: the group sizes up to
    `largest` are measured (once per machine) against the best solo loop."""
    sizes = [s for s in GROUP_SIZES if s <= largest]
    return plan_from(entry_for(config, device, threads or torch.get_num_threads(), sizes), largest)


def refresh(model_names: list[str], batch_sizes: list[int], device: torch.device, threads: int,
            on_shape=None) -> list[str]:
    """Measure every model x batch size again (solo loops and every fused group size),
    replacing the cache's entries (`tunefm bench --refresh`); returns the shapes measured.
    `on_shape(shape)` after each."""
    shapes = []
    for name in model_names:
        for batch_size in batch_sizes:
            config = {"model": name, "batch_size": batch_size}
            entry_for(config, device, threads, GROUP_SIZES, refresh=True)
            shapes.append(shape_id(config))
            if on_shape:
                on_shape(shapes[-1])
    return shapes
