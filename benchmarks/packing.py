"""Aggregate training throughput of N trials sharing one device: does packing pay?

    python benchmarks/packing.py --device cuda --concurrency 1 2 4 8   # on a GPU machine
    python benchmarks/packing.py --device cpu --concurrency 1 2        # this 2-core machine

For each N, N processes start together, each running tunefm's training loop
(`trainable.train_epoch`, the data on the device) for the same model and batch size
with one torch thread, as N trials with fractional GPUs do. Each process reports the
samples/s it reached over --seconds; the sum is the aggregate. `tunefm bench` predicts
the N at which the aggregate stops growing; this measures it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import common


def worker(model: str, batch_size: int, device_name: str, seconds: float, data_dir, start, results) -> None:
    import torch

    from tunefm import data, trainable

    torch.set_num_threads(1)
    device = torch.device(device_name)
    splits = data.load(data_dir, train_size=10_000, val_size=1000, test_size=10)
    x, y = trainable.to_tensors(splits.train_x, splits.train_y, device)
    config = {"model": model, "lr": 0.001, "batch_size": batch_size}
    state = trainable.init_state(config, device)
    with trainable.cpu_kernels(config, device):
        trainable.train_epoch(state.model, state.optimizer, x[:batch_size * 5], y[:batch_size * 5], batch_size,
                              state.generator)  # warm-up
        common.sync(device)
        start.wait()  # every process starts timing together
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            trainable.train_epoch(state.model, state.optimizer, x, y, batch_size, state.generator)
            images += len(y)
        common.sync(device)
    results.put(images / (time.perf_counter() - started))


def aggregate(n: int, args) -> dict:
    context = mp.get_context("spawn")  # CUDA cannot be forked
    start, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=worker, args=(args.model, args.batch_size, args.device, args.seconds,
                                                      args.data_dir, start, results)) for _ in range(n)]
    for p in processes:
        p.start()
    rates = [results.get() for _ in processes]
    for p in processes:
        p.join()
    return {"concurrent": n, "aggregate_samples_per_s": round(sum(rates), 1),
            "per_trial_samples_per_s": round(sum(rates) / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iaro1", help="default: iaro1")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default: cuda")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 8], help="default: 1 2 4 8")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per process (default: 10)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    rows = []
    for n in args.concurrency:
        rows.append(aggregate(n, args))
        rows[-1]["speedup_vs_1"] = round(rows[-1]["aggregate_samples_per_s"] / rows[0]["aggregate_samples_per_s"], 2)
        print(rows[-1], flush=True)
    lines = ["| trials at once | aggregate samples/s | per trial | vs 1 trial |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['concurrent']} | {r['aggregate_samples_per_s']:,.0f} | {r['per_trial_samples_per_s']:,.0f} | "
              f"{r['speedup_vs_1']:.2f}x |" for r in rows]
    import torch

    torch.set_num_threads(1)
    common.write(args.out, f"packing-{args.device}", f"{args.model} trials sharing one {args.device} device",
                 common.machine(args.device), rows, "\n".join(lines) + "\n",
                 f"{args.model}, batch size {args.batch_size}, one torch thread per process.")


if __name__ == "__main__":
    main()
