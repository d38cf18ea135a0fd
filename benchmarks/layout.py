"""CPU kernel choice per model and batch size: the evidence behind channels-last on CPU
and each model spec's `native_conv_max_batch`.

    python benchmarks/layout.py                          # every registered model
    python benchmarks/layout.py --models iaro1 kahn --batch-sizes 8 32

One training step (forward, backward, SGD step) on random images, timed three ways
in one process, interleaved:
  - default:       the model as PyTorch builds it (contiguous; oneDNN convolutions);
  - channels_last: the parameters in channels-last layout (oneDNN's faster kernels
                   for most convolutions here);
  - native:        contiguous, with oneDNN off, so PyTorch's own im2col + GEMM
                   convolution runs: less per-call overhead, which matters only at
                   tiny batches.
The table marks which one tunefm uses (`trainable.place_model`, `trainable.cpu_kernels`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import common
from tunefm import models, trainable

VARIANTS = ("default", "channels_last", "native")


def step_runner(name: str, batch_size: int, variant: str):
    torch.manual_seed(0)
    model = models.build(name)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))

    def steps(count: int) -> None:
        with trainable.onednn(variant != "native"):
            for _ in range(count):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return steps


def measure(name: str, batch_size: int, seconds: float, rounds: int) -> dict:
    runners = {v: step_runner(name, batch_size, v) for v in VARIANTS}
    started = time.perf_counter()
    runners["default"](2)
    per_step = (time.perf_counter() - started) / 2
    count = max(2, int(seconds / rounds / per_step))
    for run in runners.values():
        run(2)  # warm-up: oneDNN primitives, allocator
    timings = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant, run in runners.items():
            t = time.perf_counter()
            run(count)
            timings[variant].append(time.perf_counter() - t)
    rate = {v: count * batch_size / statistics.median(t) for v, t in timings.items()}
    config = {"model": name, "batch_size": batch_size}
    used = "native" if trainable.native_conv(config, torch.device("cpu")) else "channels_last"
    return {"model": name, "batch_size": batch_size, "steps": count,
            "samples_per_s": {v: round(r, 1) for v, r in rate.items()},
            "fastest": max(rate, key=rate.get), "tunefm_uses": used,
            "tunefm_vs_default": round(rate[used] / rate["default"], 2)}


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | default samples/s | channels-last | native conv | tunefm uses | vs default |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        s = r["samples_per_s"]
        cells = [f"**{s[v]:,.0f}**" if v == r["fastest"] else f"{s[v]:,.0f}" for v in VARIANTS]
        lines.append(f"| {r['model']} | {r['batch_size']} | {' | '.join(cells)} | {r['tunefm_uses']} | "
                     f"{r['tunefm_vs_default']:.2f} |")
    return "\n".join(lines) + "\n"


NOTES = "Bold: the fastest of the three. Random images, so no data loading is timed."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=models.names(), help="default: every registered model")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32, 128], help="default: 8 16 32 128")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per model, batch and variant (default: 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as one trial)")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for batch_size in args.batch_sizes:
            rows.append(measure(name, batch_size, args.seconds, args.rounds))
            print(rows[-1], flush=True)
    common.write(args.out, "layout", "CPU kernels per model and batch size", common.machine("cpu"), rows,
                 table(rows), NOTES)
    print(table(rows))


if __name__ == "__main__":
    main()
