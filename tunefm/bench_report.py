"""What `tunefm bench` prints: the measured speed and memory per model and batch size with
the packing advice, and what calibration has measured on this machine (its cache).

The engine measures (`engine/bench.py`, `engine/calibrate.py`); this module only writes
their records as text tables.
"""

from __future__ import annotations

import pandas as pd

from tunefm.analysis.tables import text_table
from tunefm.engine import bench, calibrate, models


def bench_text(rows: list[bench.Row], packings: list[bench.Packing], machine: bench.Machine) -> str:
    """The measurements as a table, then one line of advice per model."""
    gpu = machine.device == "cuda"
    table = pd.DataFrame([{
        "model": r.model, "batch": r.batch_size, "loop": r.loop, "samples/s": f"{r.samples_per_s:,.0f}",
        ("peak alloc MB" if gpu else "peak RSS MB"): f"{r.peak_mb:,.0f}", "model MB": f"{r.model_mb:,.0f}",
        "trial MB": f"{r.trial_mb:,.0f}", **({"GPU busy": f"{r.gpu_busy:.0%}"} if gpu else {}),
        ("trials/GPU" if gpu else "trials/node"): p.trials, "limited by": p.limit,
    } for r, p in zip(rows, packings)])
    device = (f"{machine.name}, {machine.memory_mb / 1024:,.0f} GiB, {machine.cores_per_device} CPU cores per GPU"
              if gpu else f"CPU ({machine.name}), {machine.cores_per_device} cores, "
                          f"{machine.memory_mb / 1024:,.0f} GiB")
    lines = [f"Device: {device}; {machine.cpus_per_trial:g} CPU(s) per trial", "",
             text_table(table, index=False, width=160), ""]
    for name, p in bench.per_model(packings).items():
        if p.trials == 0:
            row = next(r for r in rows if (r.model, r.batch_size) == (p.model, p.batch_size))
            lines.append(f"{name}: a trial at batch {p.batch_size} needs {row.trial_mb:,.0f} MB, more than "
                         f"{bench.USABLE_MEMORY:.0%} of this device's {machine.memory_mb:,.0f} MB; use a smaller "
                         "batch size or fewer images")
        elif gpu:
            lines.append(f"{name}: {p.trials} trial(s) per GPU (limited by {p.limit} at batch {p.batch_size}): "
                         f"--gpus-per-trial {p.gpu_fraction:g}  [tunefm's default: {models.get(name).gpu_fraction:g}]")
        else:
            lines.append(f"{name}: {p.trials} trial(s) at once on this machine (limited by {p.limit} "
                         f"at batch {p.batch_size})")
    lines.append("trial MB = model MB (weights, gradients, optimizer, activations) + the trial's data splits "
                 + ("+ the CUDA context." if gpu else "+ Python with torch."))
    if not gpu:
        lines.append("GPU packing: run tunefm bench --device cuda on a GPU machine.")
    return "\n".join(lines)


def calibration_text(contents: dict, shapes: list[str] | None = None) -> str:
    """The cache as text: per machine, per shape, each solo loop's samples/s, the loop decided
    (and how: measured, borrowed from a batch size measured, or the default), and the best fused
    group (its size, kernels and speedup over the best solo loop)."""
    where = f"Calibration cache: {calibrate.cache_dir() / calibrate.CACHE_FILE}"
    if not contents:
        return where + "\nnothing measured yet: trials calibrate their shape on first use, or run " \
                       "tunefm bench --refresh"
    lines = [where]
    for machine, entries in contents.items():
        rows = []
        for shape, entry in sorted(entries.items()):
            if shapes is not None and shape not in shapes:
                continue
            plan = calibrate.plan_from(entry, max(calibrate.GROUP_SIZES)) if "solo" in entry else None
            rows.append({"shape": shape,
                         **{loop: f"{rate:,.0f}" for loop, rate in entry.get("solo", {}).items()},
                         "loop": calibrate.decided_loop(entry),
                         "decided": entry.get("loop_from", "measured"),
                         "fused": "-" if plan is None or plan.group_size == 1 else
                                  f"{plan.group_size} x {plan.variant}: {plan.speedup:.2f}x",
                         "when": entry.get("measured_at", entry.get("decided_at", ""))[:16]})
        if rows:
            lines += ["", machine + "  (solo loops in samples/s)",
                      text_table(pd.DataFrame(rows).fillna(""), index=False, width=200)]
    return "\n".join(lines)
