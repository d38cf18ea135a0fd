"""Fused groups on a device, without Ray: how close a member's curve is to its solo curve, and
what the executor delivers end to end.

    python benchmarks/fused_check.py --device cuda      # on a GPU machine (needs no Ray)
    python benchmarks/fused_check.py --device cpu --train-size 1000 --trials 4

1. Numerics: groups of 2-4 trials (SGD with momentum, weight decay, lr decay and
   augmentation; Adam; batch norm) trained eagerly and, on CUDA, captured, against the same
   trials trained alone with the plain loop; the largest relative train/val loss difference
   after 2 epochs. On CUDA with cuDNN's TF32 convolutions on (PyTorch's default) and off.
   The group's kernels round differently from the solo ones (about 1e-7 relative per
   step); once such a difference flips a ReLU or a max-pool tie, the two runs part as two
   runs on different kernels do, fastest at high lr with momentum.
2. The executor (`tunefm.tune.executor.Executor`, the worker behind `--fuse`): N member trials of
   one shape trained for 2 epochs through it (rounds, evaluation, checkpoint bytes and all),
   each member asking for its epochs from its own thread as a trial process does; the
   second epoch's aggregate samples/s, against one trial alone through the same executor.
Writes fused-check-<device>.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import traceback

import common
import torch

from tunefm.engine import data, fused, solo, training
from tunefm.tune import executor

B = {"batch_size": 32}
CASES = {
    "iaro1 sgd": [{**B, "model": "iaro1", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "seed": 3},
                  {**B, "model": "iaro1", "lr": 0.01, "seed": 4},
                  {**B, "model": "iaro1", "lr": 0.1, "momentum": 0.5, "seed": 5, "lr_decay": 0.999},
                  {**B, "model": "iaro1", "lr": 0.02, "seed": 6, "augment": True}],
    "iaro3 sgd": [{**B, "model": "iaro3", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "seed": 3},
                  {**B, "model": "iaro3", "lr": 0.01, "seed": 4}],
    "iaro2 adam": [{**B, "model": "iaro2", "optimizer": "adam", "lr": 1e-3, "seed": 1},
                   {**B, "model": "iaro2", "optimizer": "adam", "lr": 3e-3, "weight_decay": 1e-3, "seed": 2,
                    "lr_decay": 0.999}],
    "cnn4 batch norm": [{**B, "model": "cnn4", "lr": 0.01, "seed": s} for s in (1, 2)],
}


def numerics(name: str, configs: list[dict], arrays: dict, device: torch.device, tf32: bool) -> dict:
    torch.backends.cudnn.allow_tf32 = tf32
    x, y = training.to_tensors(arrays["train_x"], arrays["train_y"], device)
    val_x, val_y = training.to_tensors(arrays["val_x"], arrays["val_y"], device)
    alone = [[m for m, _ in solo.fit(c, arrays, 2, device, loop="plain")] for c in configs]
    row = {"case": name, "members": len(configs), "cudnn_tf32": tf32 if device.type == "cuda" else None}
    for capture in ((False, True) if device.type == "cuda" else (False,)):
        group = fused.FusedGroup(device, capture=capture)
        for config in configs:
            group.add(config)
        worst = 0.0
        for epoch in range(2):
            train, val = group.train_epoch(x, y), group.evaluate(val_x, val_y)
            for i, metrics in enumerate(s[epoch] for s in alone):
                worst = max(worst, abs(train[i][0] - metrics["train_loss"]) / metrics["train_loss"],
                            abs(val[i][0] - metrics["val_loss"]) / metrics["val_loss"])
        row["captured" if capture else "eager"] = float(f"{worst:.3g}")
    return row


def through_executor(model: str, trials: int, fuse: str, arrays: dict, device: torch.device,
                     train_images: int) -> dict:
    ex = executor.Executor(arrays, device.type, threads=1, loop="auto", fuse=fuse, capacity=max(trials, 2),
                           max_epochs=3, name=f"{model}-{trials}-{fuse}")
    ids = [f"t{i}" for i in range(trials)]
    for i, trial_id in enumerate(ids):
        ex.join(trial_id, {"model": model, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "seed": i})
    results = {}

    def member(trial_id):  # as a trial process: one epoch at a time
        results[trial_id] = [ex.next_epoch(trial_id) for _ in range(2)]

    threads = [threading.Thread(target=member, args=(t,)) for t in ids]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ex.stop()
    second = [results[t][1] for t in ids]
    round_s = sum(metrics["epoch_time_s"] for metrics, _, _ in second)  # each member's share, summed
    return {"model": model, "trials": trials, "fuse": fuse, "execution": second[0][2]["execution"],
            "group_size": second[0][2]["group_size"], "wall_s": round(wall, 2),
            "samples_per_s": round(trials * train_images / round_s, 1),
            "checkpoint_kb": round(len(second[0][1]) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default: cuda")
    parser.add_argument("--train-size", type=int, default=10_000, help="executor check images (default: 10000)")
    parser.add_argument("--trials", type=int, default=16, help="executor check members (default: 16)")
    parser.add_argument("--models", nargs="+", default=["iaro1", "iaro3"], help="default: iaro1 iaro3")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(1)
    small = data.load(args.data_dir, train_size=2048, val_size=512, test_size=10)
    small_arrays = {"train_x": small.train_x, "train_y": small.train_y, "val_x": small.val_x, "val_y": small.val_y}
    checks = []
    for name, configs in CASES.items():
        for tf32 in ((True, False) if device.type == "cuda" else (True,)):
            try:
                checks.append(numerics(name, configs, small_arrays, device, tf32))
            except Exception:
                checks.append({"case": name, "error": traceback.format_exc()[-800:]})
            print(json.dumps(checks[-1]), flush=True)
    splits = data.load(args.data_dir, train_size=args.train_size, val_size=2000, test_size=10)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    rows = []
    for model in args.models:
        for trials, fuse in ((1, "off"), (args.trials, "on")):
            rows.append(through_executor(model, trials, fuse, arrays, device, args.train_size))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| case | members | cuDNN TF32 | eager: largest rel. loss diff | captured |", "|---|---:|---|---:|---:|"]
    lines += [f"| {c['case']} | {c.get('members', '')} | {c.get('cudnn_tf32', '')} | {c.get('eager', c.get('error', ''))} "
              f"| {c.get('captured', '')} |" for c in checks]
    lines += ["", "| model | trials | fuse | runs as | group | samples/s (epoch 2) | checkpoint KB |",
              "|---|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['trials']} | {r['fuse']} | {r['execution']} | {r['group_size']} | "
              f"{r['samples_per_s']:,.0f} | {r['checkpoint_kb']} |" for r in rows]
    common.write(args.out, f"fused-check-{device.type}", "Fused groups: numerics against solo trials, and the "
                 "executor end to end", common.machine(device.type), rows, "\n".join(lines) + "\n",
                 "Loss differences after 2 epochs on 2,048 images (64 steps at batch 32): float32 rounding at "
                 "first, and where it flips a ReLU or max-pool tie, two diverging runs (see the module docstring). "
                 "Executor rows: 2 epochs of --train-size images with evaluation on 2,000 and a checkpoint per "
                 "member per epoch.", checks=checks)


if __name__ == "__main__":
    main()
