"""GPU acceptance: everything about tunefm's GPU path that only a GPU can show, in one Ray-free run.

    python benchmarks/gpu_acceptance.py                          # on a GPU machine: < 8 min on one GPU
    python benchmarks/gpu_acceptance.py --device cpu --quick     # the same checks, small, on a CPU (CI)

It needs torch, pandas, pyarrow and click (tunefm's engine), the Fashion-MNIST files
($TUNEFM_DATA_DIR) and no Ray. Sections, each timed and written as soon as it is done:

  loops      one trial's step three ways per model (iaro1-4) and batch size (8, 32, 256): a
             plain PyTorch loop, tunefm's eager loop, and the captured loop (a CUDA graph);
  packing    per model at batch 32: a fused group of 16 trials (eager and captured) against 1
             and 4 separate trial processes sharing the GPU;
  numerics   fused members against the same trials alone, with cuDNN's TF32 on and off: the
             first 4 steps (checked: float rounding, so dropout masks and RNG streams agree)
             and 2 epochs (measured: from there runs on different kernels part);
  executor   the executor end to end: members of two shapes (one with dropout, which must
             not report a captured step), a member leaving, a member joining from a checkpoint
             written on the GPU, a checkpoint of the old format (device tensors, the process's
             RNG states) joining, and a checkpoint from the GPU restored on the CPU;
  pinned     in a fresh process with deterministic kernels: a pinned loop (plain, captured)
             trained twice gives the same bits, and a solo captured member says what ran;
  devices    Ray's GPU ids (indices, UUIDs) mapped to torch devices; with two GPUs or more, one
             executor per device, trained at once from two threads, each captured on its own.

Writes <out>/gpu-acceptance.{json,md} (on a CPU: gpu-acceptance-cpu.*) with the machine and
GPU model; exits 1 if a check fails. A check has a tolerance where rounding enters; a figure
without one is a measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import common
import fused_check
import packing
import throughput
import torch

from tunefm.engine import data, devices, fused, solo, training
from tunefm.tune import executor

PASS, FAIL = "pass", "fail"


class Report:
    """Checks and rows by section, written out after every section."""

    def __init__(self, out: Path, name: str, device: torch.device, quick: bool):
        self.out, self.name, self.device, self.quick = out, name, device, quick
        self.sections: dict[str, dict] = {}
        self.checks: list[dict] = []
        self.started = time.perf_counter()
        self.info = common.machine(device.type)

    def check(self, name: str, ok: bool, detail: str, defect: str = "") -> None:
        self.checks.append({"check": name, "status": PASS if ok else FAIL, "detail": detail, "defect": defect})
        print(f"[{PASS if ok else FAIL}] {name}: {detail}", flush=True)

    def section(self, name: str, rows: list[dict], seconds: float, error: str | None = None, note: str = ""):
        self.sections[name] = {"rows": rows, "seconds": round(seconds, 1), "error": error, "note": note}
        if error:
            self.check(f"{name} ran", False, error.strip().splitlines()[-1][:300])
        self.write()

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if c["status"] == FAIL]

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.info["ray_imported"] = "ray" in sys.modules
        body = {"command": common.command_line(), "machine": self.info, "quick": self.quick,
                "elapsed_s": round(time.perf_counter() - self.started, 1), "checks": self.checks,
                "sections": self.sections}
        (self.out / f"{self.name}.json").write_text(json.dumps(body, indent=2) + "\n")
        (self.out / f"{self.name}.md").write_text(self.markdown(body))

    def markdown(self, body: dict) -> str:
        lines = [f"# GPU acceptance ({self.device.type}{', quick' if self.quick else ''})", "",
                 f"`{body['command']}`", "", f"Machine: {common.describe(self.info)}", "",
                 f"{len(self.checks) - len(self.failed)} of {len(self.checks)} checks passed in "
                 f"{body['elapsed_s']} s.", "", "| check | defect | result | detail |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['defect']} | {c['status']} | {c['detail']} |" for c in self.checks]
        for name, section in self.sections.items():
            lines += ["", f"## {name} ({section['seconds']} s)", ""]
            if section["note"]:
                lines += [section["note"], ""]
            if section["error"]:
                lines += ["```", section["error"].strip()[-1500:], "```"]
            if section["rows"]:
                keys = list(dict.fromkeys(k for row in section["rows"] for k in row))
                lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in section["rows"]]
        return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def arrays_of(splits: data.Splits) -> dict:
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


# ---- loops --------------------------------------------------------------------------------
def loops_section(report: Report, args, splits: data.Splits) -> list[dict]:
    device = report.device
    x_all, y_all = training.to_tensors(splits.train_x, splits.train_y, device)
    rows = []
    for model in args.models:
        for batch_size in args.batch_sizes:
            images = min(len(y_all), batch_size * args.loop_steps)
            x, y = x_all[:images], y_all[:images]
            config = {"model": model, "lr": 0.001, "batch_size": batch_size, "seed": 0}
            torch.manual_seed(0)
            bare = training.build_model(config).to(device)
            bare_optimizer = torch.optim.SGD(bare.parameters(), lr=0.001)
            generator = torch.Generator().manual_seed(0)
            runs = {"plain PyTorch": lambda: throughput.bare_epoch(bare, bare_optimizer, x, y, batch_size, generator),
                    "tunefm eager": throughput.tunefm_epoch(config, "plain", device, x, y)}
            if device.type == "cuda":
                runs["tunefm captured"] = throughput.tunefm_epoch(config, "captured", device, x, y)
            for run in runs.values():  # warm-up (and capture)
                run()
            best = {name: float("inf") for name in runs}
            for _ in range(args.rounds):  # interleaved rounds, each method's fastest (noise only adds time)
                for name, run in runs.items():
                    best[name] = min(best[name], common.timed(run, device))
            rate = {name: images / seconds for name, seconds in best.items()}
            row = {"model": model, "batch": batch_size, **{f"{k} samples/s": round(v, 1) for k, v in rate.items()},
                   "eager / plain": round(rate["tunefm eager"] / rate["plain PyTorch"], 3)}
            if "tunefm captured" in rate:
                row["captured / plain"] = round(rate["tunefm captured"] / rate["plain PyTorch"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ---- packing ------------------------------------------------------------------------------
def packing_section(report: Report, args, splits: data.Splits) -> list[dict]:
    device = report.device
    x, y = training.to_tensors(splits.train_x, splits.train_y, device)
    pool_args = SimpleNamespace(data_dir=args.data_dir, images=len(y), device=device.type)
    processes = max(args.processes)
    pool = packing.Pool(processes, pool_args)
    rows = []
    try:
        for model in args.models:
            config = {"model": model, "lr": 0.001, "batch_size": 32}
            row = {"model": model, "batch": 32}
            for n in args.processes:
                row[f"{n} process(es) samples/s"] = round(pool.aggregate(n, model, 32, args.seconds), 1)
            xs, ys = x[:packing.chunk(32, len(y))], y[:packing.chunk(32, len(y))]
            runs = {"eager": packing.group_trainer(config, args.group, "plain", device, xs, ys)}
            if device.type == "cuda":
                runs["captured"] = packing.group_trainer(config, args.group, "captured", device, xs, ys)
            for variant, value in packing.best_rates(runs, args.seconds, device).items():
                row[f"{args.group} fused {variant} samples/s"] = round(value, 1)
            best_fused = max(v for k, v in row.items() if "fused" in k)
            one, several = row[f"{args.processes[0]} process(es) samples/s"], row[f"{processes} process(es) samples/s"]
            row["fused / 1 process"] = round(best_fused / one, 2)
            row[f"fused / {processes} processes"] = round(best_fused / several, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        pool.close()
    return rows


# ---- numerics -----------------------------------------------------------------------------
NUMERIC_CASES = {**fused_check.CASES,
                 "cnn3 dropout": [{"batch_size": 32, "model": "cnn3", "lr": 0.01, "momentum": 0.9, "seed": s,
                                   "dropout": 0.5} for s in (1, 2)]}


def first_steps(configs: list[dict], splits: data.Splits, device: torch.device, capture: bool) -> float:
    """Largest relative train-loss difference, fused vs alone, over one epoch of 4 full batches."""
    batch_size = configs[0]["batch_size"]
    n = 4 * batch_size if not capture else (fused.WARM_STEPS + 2) * batch_size
    arrays = {"train_x": splits.train_x[:n], "train_y": splits.train_y[:n], "val_x": splits.val_x[:64],
              "val_y": splits.val_y[:64]}
    x, y = training.to_tensors(arrays["train_x"], arrays["train_y"], device)
    alone = [next(iter(solo.fit(c, arrays, 1, device, loop="plain")))[0]["train_loss"] for c in configs]
    group = fused.FusedGroup(device, capture=capture)
    for config in configs:
        group.add(config)
    together = [loss for loss, _ in group.train_epoch(x, y)]
    return max(relative(a, b) for a, b in zip(together, alone))


def numerics_section(report: Report, args, splits: data.Splits) -> list[dict]:
    device = report.device
    small = arrays_of(splits)
    if args.quick:  # on a CPU, two epochs of cnn3 (4M weights) on 256 images alone and fused take 15 s
        small = {k: v[:96] if k.startswith("train") else v[:64] for k, v in small.items()}
    rows = []
    cases = {k: v for k, v in NUMERIC_CASES.items() if not args.quick or k in ("iaro1 sgd", "cnn3 dropout")}
    for name, configs in cases.items():
        for tf32 in ((True, False) if device.type == "cuda" else (None,)):
            if tf32 is not None:
                torch.backends.cudnn.allow_tf32 = tf32
            # Rounding over 4 steps stays under 1e-4 (cnn3's 4M-weight layers: 4e-5 on an H200); masks drawn
            # differently, or a member's stream out of order, would differ by 1e-2 or more. TF32 rounds to
            # 10 mantissa bits, differently per kernel.
            tolerance = 2e-2 if tf32 else 1e-3
            steps = {"eager": first_steps(configs, splits, device, False)}
            if device.type == "cuda":
                steps["captured"] = first_steps(configs, splits, device, True)
            two_epochs = fused_check.numerics(name, configs, small, device, bool(tf32))
            row = {"case": name, "cudnn TF32": "" if tf32 is None else tf32,
                   **{f"4 steps, {k}": float(f"{v:.3g}") for k, v in steps.items()},
                   "2 epochs, eager": two_epochs.get("eager"), "2 epochs, captured": two_epochs.get("captured", "")}
            rows.append(row)
            worst = max(steps.values())
            report.check(f"fused = solo, {name}{'' if tf32 is None else f', TF32 {tf32}'}", worst <= tolerance,
                         f"first 4 steps: largest relative loss difference {worst:.2g} (tolerance {tolerance:g})",
                         "3" if "dropout" in name else "")
            print(json.dumps(row), flush=True)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, for the sections after this
    return rows


# ---- executor -----------------------------------------------------------------------------
def epochs_of(ex: executor.Executor, trial_ids: list[str]) -> dict:
    """Every member asks for its next epoch from its own thread, as a trial process does."""
    results, errors = {}, {}

    def ask(trial_id):
        try:
            results[trial_id] = ex.next_epoch(trial_id)
        except BaseException as error:  # noqa: BLE001 - reported as the check's detail
            errors[trial_id] = error

    threads = [threading.Thread(target=ask, args=(t,)) for t in trial_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise next(iter(errors.values()))
    return results


def tensor_devices(value) -> set[str]:
    if isinstance(value, torch.Tensor):
        return {str(value.device)}
    if isinstance(value, dict):
        return set().union(*(tensor_devices(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(tensor_devices(v) for v in value)) if value else set()
    return set()


def old_format_checkpoint(ex: executor.Executor, trial_id: str) -> bytes:
    """A member's checkpoint as tunefm saved it before: device tensors and the process's RNG states."""
    import io

    member = ex.members[trial_id]
    state = member.group.state_dict(member.group.slot_of(trial_id)) if member.group else member.state.state_dict()
    state["torch_rng"] = state.pop("dropout_rng", torch.get_rng_state())
    if devices.cuda_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def executor_section(report: Report, args, splits: data.Splits) -> list[dict]:
    device = report.device
    arrays = arrays_of(splits)  # 512 images (256 --quick): too few steps to calibrate, so groups form uncalibrated
    small = {"batch_size": 32, "model": "iaro1", "momentum": 0.9}
    configs = {f"t{i}": {**small, "lr": lr, "seed": i} for i, lr in enumerate((0.01, 0.02, 0.05))}
    configs.update({f"d{i}": {"batch_size": 32, "model": "cnn3", "lr": 0.01, "seed": i} for i in range(2)})
    ex = executor.Executor(arrays, device.type, threads=1, loop="auto", fuse="on", capacity=4, max_epochs=3,
                           name="acceptance")
    rows = []
    try:
        for trial_id, config in configs.items():
            ex.join(trial_id, config)
        first = epochs_of(ex, list(configs))
        expected = "fused:captured" if device.type == "cuda" else "fused:plain"
        ran = {t: facts["execution"] for t, (_, _, facts) in first.items()}
        report.check("execution of a capturable group", all(ran[t] == expected for t in configs if t[0] == "t"),
                     f"iaro1 members: {sorted({ran[t] for t in configs if t[0] == 't'})} (expected {expected})", "8")
        report.check("execution of a group with dropout", all(ran[t] == "fused:plain" for t in configs if t[0] == "d"),
                     f"cnn3 members: {sorted({ran[t] for t in configs if t[0] == 'd'})} (expected fused:plain)", "8")
        blob = first["t0"][1]
        import io

        where = tensor_devices(torch.load(io.BytesIO(blob), weights_only=False))  # no map_location: as saved
        report.check("checkpoints saved from the CPU", where == {"cpu"}, f"tensors saved on {sorted(where)}", "2")
        old = old_format_checkpoint(ex, "t2")
        ex.leave("t1")
        ex.join("t0copy", configs["t0"], blob)
        ex.join("t2old", configs["t2"], old)
        second = epochs_of(ex, ["t0", "t2", "d0", "d1", "t0copy", "t2old"])
        for member, source in (("t0copy", "t0"), ("t2old", "t2")):
            a, b = second[member][0], second[source][0]
            diff = max(relative(a[k], b[k]) for k in ("train_loss", "val_loss"))
            report.check(f"joined from a {'GPU ' if device.type == 'cuda' else ''}checkpoint"
                         f"{' of the old format' if member == 't2old' else ''}",
                         a["epoch"] == b["epoch"] == 2 and diff <= 1e-5,
                         f"epoch {a['epoch']} vs {source}'s {b['epoch']}, largest relative loss difference {diff:.2g}",
                         "1")
        alone = training.init_state(configs["t0"], torch.device("cpu"))
        alone.load_state_dict(training.load_checkpoint(blob))
        cpu_arrays = arrays
        on_cpu = next(iter(solo.fit(configs["t0"], cpu_arrays, 2, torch.device("cpu"), alone)))[0]
        diff = max(relative(on_cpu[k], second["t0"][0][k]) for k in ("train_loss", "val_loss"))
        report.check("a GPU checkpoint restored on the CPU" if device.type == "cuda" else "a checkpoint restored alone",
                     on_cpu["epoch"] == 2 and diff <= 2e-2,
                     f"epoch 2 on the CPU vs on {device.type}: largest relative loss difference {diff:.2g} "
                     f"(tolerance 0.02: two devices' kernels)", "2")
        status = ex.status()
        rows = [{"trial": t, "epoch": m["epoch"], "execution": f["execution"], "group_size": f["group_size"],
                 "train_loss": round(m["train_loss"], 6), "val_loss": round(m["val_loss"], 6)}
                for t, (m, _, f) in sorted(second.items())]
        rows.append({"trial": "(executor)", "execution": f"groups {status['groups']}, rounds {status['rounds']}"})
    finally:
        ex.stop()
    return rows


# ---- pinned loops, in a process of their own --------------------------------------------------
def pinned_worker(device_name: str, data_dir, models: list[str], train_size: int, results) -> None:
    try:
        device = torch.device(device_name)
        devices.make_deterministic(device)  # before cuBLAS starts in this process
        torch.set_num_threads(1)
        splits = data.load(data_dir, train_size=train_size, val_size=256, test_size=10)
        arrays = arrays_of(splits)
        out = []
        for model in models:
            for loop in (("plain", "captured") if device.type == "cuda" else ("plain",)):
                config = {"model": model, "batch_size": 32, "lr": 0.02, "momentum": 0.9, "seed": 7}
                runs = []
                for _ in range(2):
                    metrics, state = list(solo.fit(config, arrays, 2, device, loop=loop))[-1]
                    params = torch.cat([t.detach().flatten().cpu() for t in state.state_dict()["model"].values()
                                        if t.is_floating_point()])
                    runs.append((metrics["train_loss"], metrics["val_loss"], params))
                same = runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1] and torch.equal(runs[0][2], runs[1][2])
                out.append({"model": model, "loop": loop, "same bits": same,
                            "largest parameter difference": float((runs[0][2] - runs[1][2]).abs().max())})
        executions = {}
        for name, config in (("iaro1", {"model": "iaro1", "batch_size": 32, "lr": 0.01}),
                             ("cnn3 with dropout", {"model": "cnn3", "batch_size": 32, "lr": 0.01})):
            loop = "captured" if device.type == "cuda" else "plain"
            ex = executor.Executor(arrays, device.type, threads=1, loop=loop, fuse="off", capacity=2, max_epochs=2,
                                   name=f"solo-{name}")
            ex.join("solo", config)
            metrics, _, facts = ex.next_epoch("solo")
            ex.stop()
            executions[name] = facts["execution"]
        results.put({"rows": out, "executions": executions})
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put({"error": traceback.format_exc()})


def pinned_section(report: Report, args, splits: data.Splits) -> list[dict]:
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=pinned_worker, args=(report.device.type, args.data_dir, args.models,
                                                          256 if args.quick else 1024, results))
    process.start()
    outcome = results.get(timeout=600)
    process.join(timeout=60)
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    for row in outcome["rows"]:
        report.check(f"pinned loop {row['loop']}, {row['model']}: same bits twice", row["same bits"],
                     f"largest parameter difference after 2 epochs: {row['largest parameter difference']:.3g}", "9")
    solo_loop = "captured" if report.device.type == "cuda" else "plain"
    report.check("a solo member's execution", outcome["executions"]["iaro1"] == solo_loop,
                 f"iaro1 alone with --loop {solo_loop}: reports {outcome['executions']['iaro1']}", "8")
    report.check("a solo member with dropout", outcome["executions"]["cnn3 with dropout"] == "plain",
                 f"cnn3 alone with --loop {solo_loop}: reports {outcome['executions']['cnn3 with dropout']} "
                 f"(a captured step cannot draw its masks)", "8")
    return outcome["rows"] + [{"model": k, "loop": "solo member", "same bits": "", "execution": v}
                              for k, v in outcome["executions"].items()]


# ---- devices ------------------------------------------------------------------------------
def devices_section(report: Report, args, splits: data.Splits) -> list[dict]:
    rows = []
    report.check("Ray GPU id as an index", devices.cuda_index("7", visible="5,7") == 1,
                 "'7' among CUDA_VISIBLE_DEVICES=5,7 -> 1", "7")
    report.check("Ray GPU id as a UUID", devices.cuda_index("GPU-b", visible="GPU-a,GPU-b") == 1,
                 "'GPU-b' among GPU-a,GPU-b -> 1", "7")
    count = devices.count()
    if report.device.type != "cuda":
        return rows
    uuid = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    found = devices.cuda_index(uuid, visible=None) if visible is None else (
        devices.cuda_index(uuid) if uuid in visible else 0)
    report.check("this GPU's own UUID", found == 0, f"{uuid} -> cuda:{found} (CUDA_VISIBLE_DEVICES={visible})", "7")
    if count < 2:
        rows.append({"devices": count, "note": "one GPU: executors on several devices not checked"})
        return rows
    arrays = arrays_of(splits)
    config = {"model": "iaro1", "batch_size": 32, "lr": 0.01, "momentum": 0.9}
    executors = [executor.Executor(arrays, "cuda", threads=1, loop="auto", fuse="on", capacity=4, max_epochs=3,
                                   name=f"gpu{i}", gpu_id=str(i) if visible is None else visible.split(",")[i].strip())
                 for i in range(min(count, 4))]
    try:
        for ex in executors:
            for seed in range(2):
                ex.join(f"s{seed}", {**config, "seed": seed})
        outcomes = [None] * len(executors)

        def train(i):
            outcomes[i] = epochs_of(executors[i], ["s0", "s1"])

        threads = [threading.Thread(target=train, args=(i,)) for i in range(len(executors))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        for i, ex in enumerate(executors):
            group = ex.groups[0] if ex.groups else None
            on = {str(t.device) for t in group.params.values()} if group else set()
            ok = outcomes[i] is not None and on == {f"cuda:{i}"} and group.ran == "captured"
            loss = outcomes[i]["s0"][0]["train_loss"] if outcomes[i] else None
            rows.append({"executor": ex.name, "device": str(ex.device), "params on": sorted(on),
                         "ran": group.ran if group else "", "s0 train loss": loss})
            report.check(f"executor on cuda:{i}", ok, f"parameters on {sorted(on)}, step {group.ran if group else '-'}",
                         "4")
        losses = {r["s0 train loss"] for r in rows}
        report.check("the same trial on every GPU", len(losses) == 1, f"epoch-1 train losses: {sorted(losses)}", "4")
    finally:
        for ex in executors:
            ex.stop()
    return rows


SECTIONS = {"loops": loops_section, "packing": packing_section, "numerics": numerics_section,
            "executor": executor_section, "pinned": pinned_section, "devices": devices_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="default: cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI on a CPU): iaro1 only, batches 8 and 32")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="default: all, in this order")
    parser.add_argument("--budget-s", type=float, default=420, help="skip sections that would start after this "
                        "many seconds (default: 420, so a GPU run ends inside 8 minutes)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not devices.cuda_available():
        sys.exit("Error: --device cuda, but torch sees no CUDA device here; use --device cpu")
    torch.set_num_threads(1)
    args.models = ["iaro1"] if args.quick else ["iaro1", "iaro2", "iaro3", "iaro4"]
    args.batch_sizes = [8, 32] if args.quick else [8, 32, 256]
    args.loop_steps, args.rounds = (8, 2) if args.quick else (64, 3)
    args.processes, args.group = ([1, 2], 4) if args.quick else ([1, 4], 16)
    args.seconds = 0.2 if args.quick else 0.45
    report = Report(Path(args.out), "gpu-acceptance" + ("" if device.type == "cuda" else "-cpu"), device, args.quick)
    sizes = {"loops": (8192 if not args.quick else 512, 256), "packing": (8192 if not args.quick else 512, 128),
             "numerics": (2048 if not args.quick else 256, 512 if not args.quick else 128),
             "executor": (512 if not args.quick else 256, 256 if not args.quick else 128), "pinned": (0, 0),
             "devices": (512, 256)}
    for name in args.sections:
        if time.perf_counter() - report.started > args.budget_s:
            report.section(name, [], 0.0, note=f"skipped: the run passed --budget-s {args.budget_s:g}")
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        train_size, val_size = sizes[name]
        try:
            splits = data.load(args.data_dir, train_size=max(train_size, 256), val_size=max(val_size, 128),
                               test_size=10, allow_download=False)
            rows, error = SECTIONS[name](report, args, splits), None
        except Exception:  # noqa: BLE001 - a section that breaks is a finding; the others still run
            rows, error = [], traceback.format_exc()
            print(error, file=sys.stderr, flush=True)
        report.section(name, rows, time.perf_counter() - started, error)
    report.write()
    print(f"{len(report.checks) - len(report.failed)} of {len(report.checks)} checks passed; "
          f"wrote {report.out / report.name}.json and .md", flush=True)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
