"""Aggregate training throughput of N trials on one device: separate processes vs. fused groups.

    python benchmarks/packing.py --device cuda                          # on a GPU machine (no Ray needed)
    python benchmarks/packing.py --device cpu --models iaro1 --batch-sizes 8 32 --trials 1 2 4 8

For each model, batch size and N (trials on the one device), it measures the aggregate
training samples/s of
  - processes:      N processes, each running tunefm's solo loop (`training.train_epoch`,
                    the data on the device, one torch thread; on CPU the calibrated loop, on
                    CUDA eager), timed together: separate trials sharing the device, as with
                    fractional GPUs and `--fuse off`;
  - fused:          one process training the N trials as one stacked model
                    (`fused.FusedGroup`, eager; on CPU the faster of its two kernels: oneDNN's
                    grouped convolutions or PyTorch's own);
  - fused-captured: the same group with its step captured as a CUDA graph (CUDA only);
  - auto / off:     what `--fuse auto` runs for N trials of the shape on one slot (the
                    calibrated plan: a group of up to N with its kernels, or each trial alone),
                    over what `--fuse off` runs (each trial alone in its calibrated loop); 1.00
                    where the plan is to train alone, as the two are then the same loop.
On CPU "one device" is one CPU slot: every process of this benchmark is pinned to one core,
as a trial with `--cpus-per-trial 1` gets one. "vs 1" divides by one solo trial (processes
at N=1). Worker processes start once and are reused, so process start-up is not counted.
In-process figures are the best of 3 interleaved rounds of about --seconds/3 each (noise
only adds time); the process figures are one timing of --seconds. Rows are written as they
are measured (<out>/packing-<device>.json), so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import time
from pathlib import Path

import common
import torch

METHODS = ("processes", "fused", "fused-captured", "auto")
CHUNK_STEPS = 40  # steps per timed call: short enough to stop near --seconds, long enough to hide the call
ROUNDS = 3
WORKER_SETUP_S = 300  # a worker's start (torch, CUDA context, data) or a row's set-up, at most


def load_tensors(data_dir, images: int, device: torch.device):
    from tunefm.engine import data, training

    splits = data.load(data_dir, train_size=images, val_size=100, test_size=10)
    return training.to_tensors(splits.train_x, splits.train_y, device)


def fused_min_steps() -> int:
    from tunefm.engine import fused

    return fused.WARM_STEPS + 2


def chunk(batch_size: int, images: int) -> int:
    return min(images, batch_size * CHUNK_STEPS)


def pin_to_one_core(device_name: str) -> None:
    """On CPU, this process runs on the first core it may use: one slot for every method."""
    if device_name == "cpu" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def timed_rate(train, samples_per_call: int, seconds: float, device: torch.device) -> float:
    """samples/s of repeated train() calls over about `seconds` (train() ends with a host sync)."""
    common.sync(device)
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        train()
        samples += samples_per_call
    common.sync(device)
    return samples / (time.perf_counter() - started)


def best_rates(runs: dict, seconds: float, device: torch.device) -> dict[str, float]:
    """{name: best samples/s} of `runs` ({name: (train, samples per call)}), interleaved over ROUNDS."""
    best = {name: 0.0 for name in runs}
    for _ in range(ROUNDS):
        for name, (train, samples) in runs.items():
            best[name] = max(best[name], timed_rate(train, samples, seconds / ROUNDS, device))
    return best


def solo_trainer(config: dict, loop: str, device: torch.device, x, y):
    """(train, samples per call) for one trial alone in `loop`."""
    from tunefm.engine import fused, loops, training

    batch_size = int(config["batch_size"])
    if loop == "captured":
        group = fused.FusedGroup(device, capture=True)
        group.add(config)
        group.train_epoch(x, y)  # warm-up and capture
        return (lambda: group.train_epoch(x, y)), len(y)
    state = training.init_state(config, device, loop)

    def train():
        with loops.kernels(loop):
            training.train_epoch(state.model, state.optimizer, x, y, batch_size, state.generator)
    train()  # warm-up
    return train, len(y)


def group_trainer(config: dict, n: int, variant: str, device: torch.device, x, y):
    """(train, samples per call) for n trials of config's shape as one fused group; a call
    trains CHUNK_STEPS / n steps (at least WARM_STEPS + 2), so a large group's call stays short."""
    from tunefm.engine import fused

    group = fused.FusedGroup(device, capture=variant == "captured", onednn=variant != "native_conv")
    for seed in range(n):
        group.add({**config, "seed": seed})
    batch_size = int(config["batch_size"])
    steps = min(len(y) // batch_size, max(fused_min_steps(), CHUNK_STEPS // n))
    group.train_epoch(x, y, steps)  # warm-up (and, captured, the capture)
    return (lambda: group.train_epoch(x, y, steps)), n * steps * batch_size


def worker(rank: int, data_dir, images: int, device_name: str, jobs, results, start) -> None:
    """A solo trial's process: runs jobs (model, batch size, seconds) until it gets None."""
    from tunefm.engine import training_plan

    pin_to_one_core(device_name)
    torch.set_num_threads(1)
    device = torch.device(device_name)
    x, y = load_tensors(data_dir, images, device)
    while (job := jobs.get()) is not None:
        model, batch_size, seconds = job
        config = {"model": model, "lr": 0.001, "batch_size": batch_size, "seed": rank}
        loop = training_plan.solo_loop("plain" if device.type == "cuda" else "auto", config, device)
        n = chunk(batch_size, len(y))
        train, samples = solo_trainer(config, loop, device, x[:n], y[:n])  # --fuse off's loop (eager on CUDA)
        common.sync(device)
        results.put(("ready", rank))
        start.wait()  # every process starts timing together
        results.put(("rate", timed_rate(train, samples, seconds, device)))


class Pool:
    """Worker processes started once, reused for every row."""

    def __init__(self, size: int, args):
        context = mp.get_context("spawn")  # CUDA cannot be forked
        self.results, self.start = context.Queue(), context.Event()
        self.jobs = [context.Queue() for _ in range(size)]
        self.processes = [context.Process(target=worker, daemon=True,
                                          args=(rank, args.data_dir, args.images, args.device, self.jobs[rank],
                                                self.results, self.start)) for rank in range(size)]
        for p in self.processes:
            p.start()

    def aggregate(self, n: int, model: str, batch_size: int, seconds: float) -> float:
        for queue in self.jobs[:n]:
            queue.put((model, batch_size, seconds))
        for _ in range(n):
            assert self._result(WORKER_SETUP_S)[0] == "ready"
        self.start.set()
        rates = [self._result(seconds + WORKER_SETUP_S)[1] for _ in range(n)]
        self.start.clear()  # every worker has passed its wait
        return sum(rates)

    def _result(self, timeout: float) -> tuple:
        """The next worker message; a worker that died (or hangs) is an error, not a wait forever."""
        try:
            return self.results.get(timeout=timeout)
        except queue_module.Empty:
            dead = [p.pid for p in self.processes if not p.is_alive()]
            raise RuntimeError(f"no answer from the worker processes in {timeout:.0f} s"
                               + (f" (exited: {dead})" if dead else "")) from None

    def close(self) -> None:
        for queue in self.jobs:
            queue.put(None)
        for p in self.processes:
            p.join(timeout=30)


def in_process(n: int, model: str, batch_size: int, methods: list[str], seconds: float, x, y,
               device: torch.device) -> tuple[dict, dict]:
    """The fused and auto figures of one row, timed in interleaved rounds; (rates, details)."""
    from tunefm.engine import calibrate, loops, training_plan

    config = {"model": model, "lr": 0.001, "batch_size": batch_size}
    images = chunk(batch_size, len(y))
    xs, ys = x[:images], y[:images]
    runs, details = {}, {}
    if "fused" in methods:
        for variant in (("plain",) if device.type == "cuda" else ("plain", "native_conv")):
            runs[f"fused:{variant}"] = group_trainer(config, n, variant, device, xs, ys)
    if "fused-captured" in methods:
        runs["fused-captured"] = group_trainer(config, n, "captured", device, xs, ys)
    if "auto" in methods:
        plan = calibrate.fusion_plan(config, device, threads=1, largest=n)
        off_loop = training_plan.solo_loop(loops.AUTO, config, device)
        details["auto_runs"] = off_loop if plan.group_size == 1 else f"{plan.group_size} x {plan.variant}"
        if plan.group_size > 1:
            runs["off"] = solo_trainer(config, off_loop, device, xs, ys)
            runs["auto"] = group_trainer(config, plan.group_size, plan.variant, device, xs, ys)
    rates = best_rates(runs, seconds, device)
    out = {}
    fused_rates = {k.split(":")[1]: v for k, v in rates.items() if k.startswith("fused:")}
    if fused_rates:
        kernels = max(fused_rates, key=fused_rates.get)
        out["fused"] = fused_rates[kernels]
        details["fused_kernels"] = kernels
    if "fused-captured" in rates:
        out["fused-captured"] = rates["fused-captured"]
    if "auto" in methods:
        details["auto_vs_off"] = round(rates["auto"] / rates["off"], 3) if "auto" in rates else 1.0
    return out, details


def table(rows: list[dict], methods: list[str]) -> str:
    shown = [m for m in methods if m != "auto"]
    head = "| model | batch | trials | " + " | ".join(f"{m} samples/s | vs 1" for m in shown) + " |"
    lines = [head + (" auto runs | auto / off |" if "auto" in methods else ""),
             "|---|---:|---:|" + "---:|---:|" * len(shown) + ("---|---:|" if "auto" in methods else "")]
    for r in rows:
        cells = []
        for m in shown:
            rate = r["samples_per_s"].get(m)
            cells += ["" if rate is None else f"{rate:,.0f}",
                      "" if rate is None else f"{rate / r['solo_samples_per_s']:.2f}x"]
        if "auto" in methods:
            cells += [r.get("auto_runs", ""), f"{r['auto_vs_off']:.2f}" if "auto_vs_off" in r else ""]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['trials']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default: cuda")
    parser.add_argument("--models", nargs="+", default=["iaro1", "iaro2", "iaro3", "iaro4"],
                        help="default: iaro1 iaro2 iaro3 iaro4")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 256], help="default: 8 32 256")
    parser.add_argument("--trials", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="default: 1 2 4 8 16")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="default: all on cuda; processes, fused and auto on cpu")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per figure (default: 1.5)")
    parser.add_argument("--images", type=int, default=8192, help="training images on the device (default: 8192)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    parser.add_argument("--name", default=None, help="output file name (default: packing-<device>)")
    args = parser.parse_args()

    device = torch.device(args.device)
    methods = args.methods or (list(METHODS) if device.type == "cuda" else ["processes", "fused", "auto"])
    pin_to_one_core(args.device)
    torch.set_num_threads(1)
    x, y = load_tensors(args.data_dir, args.images, device)
    pool = Pool(max(args.trials) if "processes" in methods else 1, args)
    info = common.machine(device.type)
    name, rows = args.name or f"packing-{device.type}", []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for model in args.models:
            for batch_size in args.batch_sizes:
                solo = pool.aggregate(1, model, batch_size, args.seconds)
                for n in args.trials:
                    rates, details, errors = {}, {}, {}
                    if "processes" in methods:
                        rates["processes"] = solo if n == 1 else pool.aggregate(n, model, batch_size, args.seconds)
                    try:
                        found, details = in_process(n, model, batch_size, methods, args.seconds, x, y, device)
                        rates.update(found)
                    except Exception as error:  # keep the other rows: one failing method is a finding
                        errors["in_process"] = f"{type(error).__name__}: {error}"[:300]
                    rows.append({"model": model, "batch_size": batch_size, "trials": n,
                                 "solo_samples_per_s": round(solo, 1),
                                 "samples_per_s": {k: round(v, 1) for k, v in rates.items()}, **details,
                                 **({"errors": errors} if errors else {})})
                    print(json.dumps(rows[-1]), flush=True)
                    (out / f"{name}.json").write_text(json.dumps(
                        {"command": common.command_line(), "machine": info, "rows": rows}, indent=2) + "\n")
    finally:
        pool.close()
    notes = (f"One torch thread per process{', every process pinned to one core (one CPU slot)' if device.type == 'cpu' else ''}; "
             f"{args.images:,} training images on the device, in calls of {CHUNK_STEPS} steps (a group of N: "
             f"{CHUNK_STEPS}/N, at least {fused_min_steps()}). vs 1 = aggregate "
             "samples/s / one solo trial's (processes at N = 1, measured just before the row's other figures).")
    common.write(out, name, f"Trials sharing one {device.type} device: separate processes vs. fused groups",
                 info, rows, table(rows, methods), notes)


if __name__ == "__main__":
    main()
