"""Sweep efficiency and utilization: fourfam at reduced scale with ASHA and with every trial run to the end.

    python benchmarks/sweep.py                                  # 112 trials, 1,000 images, 27 epochs
    python benchmarks/sweep.py --train-size 500 --max-epochs 9  # quicker

Both runs are `tunefm search` itself (`search.run`, timed in its Tuner.fit) on one local Ray,
with the same data slice, seeds and trial order, so a trial that runs in both trains
the same curve. Reported per run: epochs trained, wall time of `Tuner.fit`, the best
validation accuracy found, and utilization = the trials' time inside their epochs
(training and evaluation steps) / (wall time x concurrent trials). Regret = best val
acc of the full grid - best val acc found with ASHA, in accuracy points.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import common

from tunefm.run import store
from tunefm.tune import lifecycle
from tunefm.tune.settings import SearchSettings


def sweep(results: Path, name: str, early_stop: bool, args) -> dict:
    settings = SearchSettings(space="fourfam", name=name, results_dir=str(results), data_dir=args.data_dir,
                                     train_size=args.train_size, val_size=args.val_size, test_size=10,
                                     max_epochs=args.max_epochs, test_top=0, early_stop=early_stop,
                                     concurrency=args.concurrency, fuse="off")
    wall, run_dir = common.tunefm_fit(settings)
    trials, epochs = store.read_trials(run_dir), store.read_epochs(run_dir)
    best = trials.loc[trials["best_val_acc"].idxmax()]
    return {
        "run": name, "early_stop": early_stop, "trials": len(trials),
        "stopped_early": int(trials["stopped_early"].sum()), "epochs": len(epochs),
        "wall_s": round(wall, 1), "best_val_acc": float(best["best_val_acc"]),
        "best_config": {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in ("model", "lr", "batch_size")},
        "in_epochs_s": round(float(epochs["epoch_time_s"].sum()), 1),
        "utilization": round(float(epochs["epoch_time_s"].sum()) / (wall * args.concurrency), 3),
        "epoch_time_s_median": round(float(epochs["epoch_time_s"].median()), 3),
    }


def table(rows: list[dict], full: dict) -> str:
    lines = ["| run | trials | stopped early | epochs | share of full grid's epochs | wall s | best val acc | "
             "regret (points) | utilization |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['trials']} | {r['stopped_early']} | {r['epochs']:,} | "
                     f"{r['epochs'] / full['epochs']:.1%} | {r['wall_s']:.0f} | {r['best_val_acc']:.4f} | "
                     f"{100 * (full['best_val_acc'] - r['best_val_acc']):.2f} | {r['utilization']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=1000, help="training images (default: 1000)")
    parser.add_argument("--val-size", type=int, default=2000, help="validation images (default: 2000)")
    parser.add_argument("--max-epochs", type=int, default=27, help="epochs per trial, ASHA's max_t (default: 27)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count(), help="trials at once (default: cores)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    with lifecycle.ray_session(None, num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False), \
            tempfile.TemporaryDirectory() as workdir:
        asha = sweep(Path(workdir), "asha", True, args)
        print(asha, flush=True)
        full = sweep(Path(workdir), "full-grid", False, args)
        print(full, flush=True)
        info = common.machine("cpu")
    rows = [asha, full]
    for r in rows:
        r["share_of_full_epochs"] = round(r["epochs"] / full["epochs"], 4)
        r["regret_points"] = round(100 * (full["best_val_acc"] - r["best_val_acc"]), 3)
    notes = (f"fourfam (iaro1..iaro4 x 4 learning rates x 7 batch sizes), {args.train_size:,} training and "
             f"{args.val_size:,} validation images, {args.max_epochs} epochs, {args.concurrency} trials at once; "
             "ASHA as `tunefm search` sets it (val_acc per epoch, grace period 1, reduction factor 3). "
             f"Best configuration: ASHA {asha['best_config']}, full grid {full['best_config']}.")
    common.write(args.out, "sweep", "Sweep efficiency and utilization", info, rows, table(rows, full), notes)
    print(table(rows, full))


if __name__ == "__main__":
    main()
