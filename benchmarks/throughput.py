"""Training throughput: tunefm's loop vs. a bare PyTorch loop vs. a DataLoader pipeline.

    python benchmarks/throughput.py                       # iaro1..iaro4 at batch 8, 32, 256
    python benchmarks/throughput.py --models iaro1 --batch-sizes 32 --samples 5000
    python benchmarks/throughput.py --device cuda         # on a GPU, the data on the GPU

For each model and batch size, one process times one training epoch of
  - tunefm:     `tunefm.trainable.train_epoch` on the model `trainable.init_state`
                builds (preloaded tensors on the device, a seeded permutation, on-device
                loss/accuracy sums, its CPU kernel choice: channels-last or native conv):
                what every trial runs;
  - bare:       the ceiling: the same model, tensors and order, nothing but
                forward, backward and step;
  - dataloader: torchvision's FashionMNIST with ToTensor + Normalize through a
                DataLoader (shuffle, num_workers=0), each batch copied to the device,
                the model as PyTorch builds it: the pipeline of the seeds and of Ray's
                own examples.
All use the same thread count; the methods are interleaved over several rounds and
the median is kept, so background noise hits all three alike. Writes
throughput.json and throughput.md (with the machine description) to --out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

import common
from tunefm import data, models, trainable


def bare_epoch(model, optimizer, x, y, batch_size, generator):
    model.train()
    order = torch.randperm(len(y), generator=generator).to(x.device)
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


def dataloader_epoch(model, optimizer, loader, device):
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(model_name: str, batch_size: int, splits, dataset, rounds: int, device: torch.device) -> dict:
    x, y = trainable.to_tensors(splits.train_x, splits.train_y, device)
    n = len(y)
    config = {"model": model_name, "lr": 0.001, "batch_size": batch_size}  # small lr: finite for all rounds
    ours = trainable.init_state(config, device)
    torch.manual_seed(0)
    theirs = models.build(model_name).to(device)
    their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.001)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    def with_tunefm_kernels(epoch):  # as `trainable.fit` runs its epochs
        def run():
            with trainable.cpu_kernels(config, device):
                epoch(ours.model, ours.optimizer, x, y, batch_size, generator)
        return run

    runs = {
        "tunefm": with_tunefm_kernels(trainable.train_epoch),
        "bare": with_tunefm_kernels(bare_epoch),
        "dataloader": lambda: dataloader_epoch(theirs, their_optimizer, loader, device),
    }
    for run in runs.values():  # warm-up: allocator, kernels, first-touch
        run()
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds[name].append(common.timed(run, device))
    rate = {name: n / statistics.median(values) for name, values in seconds.items()}
    return {
        "model": model_name, "batch_size": batch_size, "samples": n,
        "cpu_kernels": "native" if trainable.native_conv(config, device) else
                       "channels_last" if device.type == "cpu" else "default",
        "samples_per_s": {k: round(v, 1) for k, v in rate.items()},
        "tunefm_vs_bare": round(rate["tunefm"] / rate["bare"], 3),
        "tunefm_vs_dataloader": round(rate["tunefm"] / rate["dataloader"], 2),
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | tunefm samples/s | bare samples/s | DataLoader samples/s | tunefm / bare | tunefm / DataLoader |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["samples_per_s"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {s['tunefm']:,.0f} | {s['bare']:,.0f} | "
                     f"{s['dataloader']:,.0f} | {r['tunefm_vs_bare']:.3f} | {r['tunefm_vs_dataloader']:.2f} |")
    return "\n".join(lines) + "\n"


NOTES = """
tunefm and bare train the same model object with tunefm's CPU kernels (channels-last, or
the native convolution at tiny batches where the model's spec says so; see `layout.md`); the DataLoader pipeline trains the model as PyTorch builds it,
as the seeds did. Each figure is the median of the timed epochs after one warm-up epoch.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iaro1", "iaro2", "iaro3", "iaro4"],
                        help="default: iaro1 iaro2 iaro3 iaro4")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 256], help="default: 8 32 256")
    parser.add_argument("--samples", type=int, default=5000, help="training images per epoch (default: 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per method (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as one trial)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = data.load(args.data_dir, train_size=args.samples, val_size=1000)
    folder, _ = data.resolve_dir(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        dataset = torchvision_dataset(folder, Path(workdir), args.samples)
        for name in args.models:
            for batch_size in args.batch_sizes:
                row = measure(name, batch_size, splits, dataset, args.rounds, device)
                print(json.dumps(row), flush=True)
                rows.append(row)
    info = common.machine(device.type)
    name = "throughput" if device.type == "cpu" else f"throughput-{device.type}"
    common.write(args.out, name, "Training throughput", info, rows, table(rows), NOTES)
    print(table(rows))


if __name__ == "__main__":
    main()
