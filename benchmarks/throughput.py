"""Training throughput: tunefm's loop vs. a bare PyTorch loop vs. a DataLoader pipeline.

    python benchmarks/throughput.py                       # iaro1, iaro2 at batch 8, 32, 256
    python benchmarks/throughput.py --models iaro1 --batch-sizes 32 --samples 5000

For each model and batch size, one process times one training epoch of
  - tunefm:     `tunefm.trainable.train_epoch` (preloaded tensors, seeded permutation,
                 on-device loss/accuracy sums): what every trial runs;
  - bare:       the ceiling: the same tensors and order, nothing but forward,
                 backward and step;
  - dataloader: torchvision's FashionMNIST with ToTensor + Normalize through a
                 DataLoader (shuffle, num_workers=0): the pipeline of the seeds and of
                 Ray's own examples.
All use the same thread count; methods are interleaved over several rounds and the
median is kept, so background noise hits all three alike. Writes JSON and a markdown
table (with the machine description) to --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from tunefm import data, models, trainable


def bare_epoch(model, optimizer, x, y, batch_size, generator):
    model.train()
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def torchvision_dataset(data_dir: Path, workdir: Path, limit: int):
    """torchvision's own FashionMNIST class, reading the local IDX files."""
    from torchvision import datasets, transforms

    raw = workdir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in data.FILES.values():
        source = data.find_file(data_dir, stem)
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rb") as f:
            (raw / stem).write_bytes(f.read())
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((trainable.PIXEL_MEAN,), (trainable.PIXEL_STD,))])
    full = datasets.FashionMNIST(str(workdir), train=True, transform=transform, download=False)
    return torch.utils.data.Subset(full, range(limit))


def dataloader_epoch(model, optimizer, loader):
    model.train()
    for xb, yb in loader:
        loss = nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(model_name: str, batch_size: int, splits, dataset, rounds: int) -> dict:
    x, y = trainable.to_tensors(splits.train_x, splits.train_y, torch.device("cpu"))
    n = len(y)
    torch.manual_seed(0)
    model = models.build(model_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)  # small lr: stays finite for all rounds
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    runs = {
        "tunefm": lambda: trainable.train_epoch(model, optimizer, x, y, batch_size, generator),
        "bare": lambda: bare_epoch(model, optimizer, x, y, batch_size, generator),
        "dataloader": lambda: dataloader_epoch(model, optimizer, loader),
    }
    for run in runs.values():  # warm-up: allocator, kernels, first-touch
        run()
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    rate = {name: n / statistics.median(values) for name, values in seconds.items()}
    return {
        "model": model_name, "batch_size": batch_size, "samples": n,
        "samples_per_s": {k: round(v, 1) for k, v in rate.items()},
        "tunefm_vs_bare": round(rate["tunefm"] / rate["bare"], 3),
        "tunefm_vs_dataloader": round(rate["tunefm"] / rate["dataloader"], 2),
    }


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def markdown(rows: list[dict], info: dict) -> str:
    lines = [f"Machine: {info['cores']} cores, {info['threads']} torch thread(s), torch {info['torch']}, "
             f"Python {info['python']}, CPU.", "",
             "| model | batch | tunefm samples/s | bare samples/s | DataLoader samples/s | tunefm / bare | tunefm / DataLoader |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["samples_per_s"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {s['tunefm']:,.0f} | {s['bare']:,.0f} | "
                     f"{s['dataloader']:,.0f} | {r['tunefm_vs_bare']:.3f} | {r['tunefm_vs_dataloader']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iaro1", "iaro2"], help="default: iaro1 iaro2")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 256], help="default: 8 32 256")
    parser.add_argument("--samples", type=int, default=5000, help="training images per epoch (default: 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per method (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as one trial)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    splits = data.load(args.data_dir, train_size=args.samples, val_size=1000)
    folder, _ = data.resolve_dir(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        dataset = torchvision_dataset(folder, Path(workdir), args.samples)
        for name in args.models:
            for batch_size in args.batch_sizes:
                row = measure(name, batch_size, splits, dataset, args.rounds)
                print(json.dumps(row), flush=True)
                rows.append(row)
    info = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "data_dir"))
    (out / "throughput.json").write_text(json.dumps({"command": command, "machine": info, "rows": rows}, indent=2) + "\n")
    (out / "throughput.md").write_text(f"# Training throughput\n\n`{command}`\n\n" + markdown(rows, info))
    print(markdown(rows, info))


if __name__ == "__main__":
    main()
