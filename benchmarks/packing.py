"""Aggregate training throughput of N trials on one device: separate processes vs. fused groups.

    python benchmarks/packing.py --device cuda                          # on a GPU machine (no Ray needed)
    python benchmarks/packing.py --device cpu --models iaro1 --batch-sizes 8 32 --trials 1 2 4 8

For each model, batch size and N (trials on the one device), it measures the aggregate
training samples/s of
  - processes:      N processes, each running tunefm's solo loop (`trainable.train_epoch`,
                    the data on the device, one torch thread), timed together: today's
                    packing of trials with fractional GPUs;
  - fused:          one process training the N trials as one stacked model
                    (`fused.FusedGroup`, eager);
  - fused-captured: the same group with its step captured as a CUDA graph (CUDA only).
"vs 1" divides by one eager solo trial (processes at N=1). Worker processes start once
and are reused for every row, so process start-up is not counted. Each figure is the
samples trained in about --seconds of timed work after a warm-up; the rows are written
as they are measured (<out>/packing-<device>.json), so a run cut short keeps its rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch

import common

METHODS = ("processes", "fused", "fused-captured")
CHUNK_STEPS = 40  # steps per timed call: short enough to stop near --seconds, long enough to hide the call


def load_tensors(data_dir, images: int, device: torch.device):
    from tunefm import data, trainable

    splits = data.load(data_dir, train_size=images, val_size=100, test_size=10)
    return trainable.to_tensors(splits.train_x, splits.train_y, device)


def chunk(batch_size: int, images: int) -> int:
    return min(images, batch_size * CHUNK_STEPS)


def timed_rate(train, samples_per_call: int, seconds: float, device: torch.device) -> float:
    """samples/s of repeated train() calls over about `seconds` (train() ends with a host sync)."""
    common.sync(device)
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        train()
        samples += samples_per_call
    common.sync(device)
    return samples / (time.perf_counter() - started)


def worker(rank: int, data_dir, images: int, device_name: str, jobs, results, start) -> None:
    """A solo trial's process: runs jobs (model, batch size, seconds) until it gets None."""
    from tunefm import trainable

    torch.set_num_threads(1)
    device = torch.device(device_name)
    x, y = load_tensors(data_dir, images, device)
    while (job := jobs.get()) is not None:
        model, batch_size, seconds = job
        config = {"model": model, "lr": 0.001, "batch_size": batch_size, "seed": rank}
        state = trainable.init_state(config, device)
        n = chunk(batch_size, len(y))

        def train():
            with trainable.cpu_kernels(config, device):
                trainable.train_epoch(state.model, state.optimizer, x[:n], y[:n], batch_size, state.generator)

        train()  # warm-up: kernels, allocator
        common.sync(device)
        results.put(("ready", rank))
        start.wait()  # every process starts timing together
        results.put(("rate", timed_rate(train, n, seconds, device)))
        del state


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
            assert self.results.get()[0] == "ready"
        self.start.set()
        rates = [self.results.get()[1] for _ in range(n)]
        self.start.clear()  # every worker has passed its wait
        return sum(rates)

    def close(self) -> None:
        for queue in self.jobs:
            queue.put(None)
        for p in self.processes:
            p.join(timeout=30)


def fused_rate(n: int, model: str, batch_size: int, seconds: float, x, y, device, capture: bool) -> float:
    from tunefm import fused

    group = fused.FusedGroup(device, capture=capture)
    for seed in range(n):
        group.add({"model": model, "lr": 0.001, "batch_size": batch_size, "seed": seed})
    images = chunk(batch_size, len(y))
    xs, ys = x[:images], y[:images]
    group.train_epoch(xs, ys)  # warm-up (and, captured, the capture)
    return timed_rate(lambda: group.train_epoch(xs, ys), n * images, seconds, device)


def table(rows: list[dict], methods: list[str]) -> str:
    head = "| model | batch | trials | " + " | ".join(f"{m} samples/s | vs 1" for m in methods) + " |"
    lines = [head, "|---|---:|---:|" + "---:|---:|" * len(methods)]
    for r in rows:
        cells = []
        for m in methods:
            rate = r["samples_per_s"].get(m)
            cells += ["" if rate is None else f"{rate:,.0f}",
                      "" if rate is None else f"{rate / r['solo_samples_per_s']:.2f}x"]
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
                        help="default: all three on cuda, processes and fused on cpu")
    parser.add_argument("--process-trials", nargs="+", type=int, default=None,
                        help="the N at which separate processes are measured (default: --trials)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per figure (default: 1)")
    parser.add_argument("--images", type=int, default=8192, help="training images on the device (default: 8192)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    device = torch.device(args.device)
    methods = args.methods or (list(METHODS) if device.type == "cuda" else ["processes", "fused"])
    process_trials = sorted(set(args.process_trials or args.trials) | {1})
    torch.set_num_threads(1)
    x, y = load_tensors(args.data_dir, args.images, device)
    pool = Pool(max(process_trials), args) if "processes" in methods else Pool(1, args)
    info = common.machine(device.type)
    name, rows = f"packing-{device.type}", []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for model in args.models:
            for batch_size in args.batch_sizes:
                solo = pool.aggregate(1, model, batch_size, args.seconds)
                for n in args.trials:
                    rates, errors = {}, {}
                    if "processes" in methods and n in process_trials:
                        rates["processes"] = solo if n == 1 else pool.aggregate(n, model, batch_size, args.seconds)
                    for method, capture in (("fused", False), ("fused-captured", True)):
                        if method in methods:
                            try:
                                rates[method] = fused_rate(n, model, batch_size, args.seconds, x, y, device, capture)
                            except Exception as error:  # keep the other rows: one failing method is a finding
                                errors[method] = f"{type(error).__name__}: {error}"[:300]
                    rows.append({"model": model, "batch_size": batch_size, "trials": n,
                                 "solo_samples_per_s": round(solo, 1),
                                 "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
                                 **({"errors": errors} if errors else {})})
                    print(json.dumps(rows[-1]), flush=True)
                    (out / f"{name}.json").write_text(json.dumps(
                        {"command": common.command_line(), "machine": info, "rows": rows}, indent=2) + "\n")
    finally:
        pool.close()
    notes = (f"One torch thread per process; {args.images:,} training images on the device; each figure is "
             f"the samples trained in about {args.seconds:g} s after a warm-up, in calls of {CHUNK_STEPS} steps. "
             "vs 1 = aggregate samples/s / one eager solo trial's samples/s (processes at N = 1), measured "
             "just before the row's other figures.")
    common.write(out, name, f"Trials sharing one {device.type} device: separate processes vs. fused groups",
                 info, rows, table(rows, methods), notes)


if __name__ == "__main__":
    main()
