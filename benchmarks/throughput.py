"""Training throughput: tunefm's loop vs. a plain PyTorch loop vs. a DataLoader pipeline.

    python benchmarks/throughput.py                       # iaro1..iaro4 at batch 8, 32, 128
    python benchmarks/throughput.py --models iaro1 --batch-sizes 32 --samples 5000
    python benchmarks/throughput.py --device cuda         # on a GPU, the data on the GPU

For each model and batch size, one process times one training epoch of
  - tunefm:     what a trial runs with `--loop auto`: `tunefm.engine.training.train_epoch` (preloaded
                tensors on the device, a seeded permutation, on-device loss/accuracy sums) in
                the loop calibration chose on this machine (`tunefm bench --calibration`), or
                on CUDA the captured step if that was faster;
  - plain:      a plain PyTorch loop: the same model, tensors, order, batch size and threads,
                PyTorch's default layout and kernels, nothing but forward, backward and step;
  - dataloader: torchvision's FashionMNIST with ToTensor + Normalize through a
                DataLoader (shuffle, num_workers=0), each batch copied to the device,
                the model as PyTorch builds it: the pipeline of the seeds and of Ray's
                own examples.
All use the same thread count; the methods are interleaved over several rounds and each
keeps its fastest epoch (noise only ever adds time), so background noise hits all three alike. Writes
throughput.json and throughput.md (with the machine description) to --out. The target:
tunefm >= 0.97x plain for every row, on the machine at hand. Needs torchvision (for the
DataLoader baseline) besides torch; no Ray.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import common
import torch
from torch import nn

from tunefm.engine import data, loops, models, training, training_plan


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
                                    transforms.Normalize((training.PIXEL_MEAN,), (training.PIXEL_STD,))])
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


def tunefm_epoch(config: dict, loop: str, device: torch.device, x, y):
    """One epoch as a trial with this loop runs it (`solo.fit`)."""
    if loop == "captured":
        from tunefm.engine import fused

        group = fused.FusedGroup(device, capture=True)
        group.add(config)
        return lambda: group.train_epoch(x, y)
    state = training.init_state(config, device, loop)

    def run():
        with loops.kernels(loop):
            training.train_epoch(state.model, state.optimizer, x, y, int(config["batch_size"]), state.generator)
    return run


def measure(model_name: str, batch_size: int, splits, dataset, rounds: int, device: torch.device) -> dict:
    x, y = training.to_tensors(splits.train_x, splits.train_y, device)
    n = len(y)
    config = {"model": model_name, "lr": 0.001, "batch_size": batch_size}  # small lr: finite for all rounds
    loop = training_plan.solo_loop("auto", config, device)
    torch.manual_seed(0)
    plain = models.build(model_name).to(device)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.001)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    theirs = models.build(model_name).to(device)
    their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.001)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)
    runs = {
        "tunefm": tunefm_epoch(config, loop, device, x, y),
        "plain": lambda: bare_epoch(plain, plain_optimizer, x, y, batch_size, generator),
        "dataloader": lambda: dataloader_epoch(theirs, their_optimizer, loader, device),
    }
    for run in runs.values():  # warm-up: allocator, kernels, first-touch
        run()
    seconds = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds[name].append(common.timed(run, device))
    rate = {name: n / min(values) for name, values in seconds.items()}
    return {
        "model": model_name, "batch_size": batch_size, "samples": n, "loop": loop,
        "samples_per_s": {k: round(v, 1) for k, v in rate.items()},
        "tunefm_vs_plain": round(rate["tunefm"] / rate["plain"], 3),
        "tunefm_vs_dataloader": round(rate["tunefm"] / rate["dataloader"], 2),
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | tunefm loop | tunefm samples/s | plain samples/s | DataLoader samples/s | "
             "tunefm / plain | tunefm / DataLoader |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["samples_per_s"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['loop']} | {s['tunefm']:,.0f} | {s['plain']:,.0f} | "
                     f"{s['dataloader']:,.0f} | {r['tunefm_vs_plain']:.3f} | {r['tunefm_vs_dataloader']:.2f} |")
    return "\n".join(lines) + "\n"


NOTES = """
tunefm runs the loop `--loop auto` picks (calibrated on this machine before the timing; see
`tunefm bench --calibration`); plain is a plain PyTorch loop over the same tensors; the
DataLoader pipeline trains the model as PyTorch builds it, as the seeds did. Each figure is
the fastest of the timed epochs after one warm-up epoch.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iaro1", "iaro2", "iaro3", "iaro4"],
                        help="default: iaro1 iaro2 iaro3 iaro4")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32, 128], help="default: 8 32 128")
    parser.add_argument("--samples", type=int, default=5000, help="training images per epoch (default: 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per method (default: 5)")
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
