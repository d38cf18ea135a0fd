"""Whole `tunefm search` commands with --fuse off, on and auto: what fusion does to a search.

    python benchmarks/fusion_search.py                         # both studies, once each (~15 min, 2 cores; --repeats 3: ~40 min)
    python benchmarks/fusion_search.py --studies small --repeats 2

A fused group's kernels can win while the search around them loses (a worker process per
member, rounds, checkpoints as bytes, members crowded onto one slot), so this times what a
user runs: the `tunefm search` command in a fresh process, Ray's start and the test
evaluation included, wall clock from launch to exit. Studies:

  small   the 16 iaro1 trials at batch 8 of issue 26 (momentum 0, 0.5, 0.9, 0.95 x fourfam's
          4 learning rates), 2 epochs of 24,000 images, no early stopping;
  larger  the README's quick look at fourfam: 112 trials of 4 models x 7 batch sizes x 4
          learning rates, 3 epochs of 3,000 images, ASHA.

The modes of a study run one after another, in turn (off, on, auto; again for --repeats),
so a slow spell of the machine hits them alike. Calibration is warmed first (a fresh
calibration cache, filled as `--fuse auto` fills it on a machine's first run), so the
figures are those of a search on a machine that has run tunefm before. Each run's output is
checked for lines that are not tunefm's own (Ray's worker and raylet output). Writes
fusion-search.json and fusion-search.md to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

STUDIES = {
    "small": ["--space", "fourfam", "--set", "model=iaro1", "--set", "batch_size=8",
              "--set", "momentum=0,0.5,0.9,0.95", "--max-epochs", "2", "--train-size", "24000", "--no-early-stop"],
    "larger": ["--space", "fourfam", "--max-epochs", "3", "--train-size", "3000", "--val-size", "1000"],
}
MODES = ("off", "on", "auto")
NOISE = ("(raylet)", "Checkpoint successfully created", " pid=", "Exception ignored in", "terminate called")


def warm_calibration(study_args: list[str]) -> float:
    """Fill the calibration cache as `--fuse auto` would on this machine's first search; return
    what auto's decision then costs a search (seconds, the cache warm), its only work beyond off's."""
    from tunefm.tune import placement, search
    from tunefm.tune.settings import SearchSettings

    settings = SearchSettings(**settings_from(study_args))
    plan = search.NewRun.make(settings)
    slots = len(os.sched_getaffinity(0))
    configs = plan.study.search.configs(plan.study)

    def decide():
        placement.decide("auto", configs, False, 1, None, None, len(plan.splits.train_y), plan.study.max_epochs,
                         slots=slots, cores=slots)

    decide()
    started = time.perf_counter()
    decide()
    return time.perf_counter() - started


def settings_from(study_args: list[str]) -> dict:
    """The SearchSettings of a study's command-line arguments (for the warm-up)."""
    options, sets, args = {}, [], list(study_args)
    while args:
        flag = args.pop(0)
        if flag == "--no-early-stop":
            options["early_stop"] = False
        elif flag == "--set":
            sets.append(args.pop(0))
        else:
            key, value = flag[2:].replace("-", "_"), args.pop(0)
            options[key] = int(value) if value.isdigit() else value
    return {**options, "sets": tuple(sets), "results_dir": tempfile.mkdtemp(prefix="tunefm-warm-")}


def run_search(study_args: list[str], mode: str, results: Path, env: dict) -> dict:
    name = f"{mode}-{int(time.time() * 1000)}"
    command = [sys.executable, "-c", "from tunefm.cli import main; main()", "search", *study_args,
               "--fuse", mode, "--results", str(results), "--name", name]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    fusion = next((line for line in output.splitlines() if line.startswith("Fusion: ")), "")
    noise = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    trials = epochs = None
    if done.returncode == 0:
        import pandas as pd

        table = pd.read_parquet(results / name / "trials.parquet")
        trials, epochs = len(table), int(table["epochs"].sum())
    print(f"{mode:>4}: {wall:6.1f} s, rc {done.returncode}, {fusion}", flush=True)
    return {"mode": mode, "wall_s": round(wall, 1), "returncode": done.returncode, "fusion": fusion,
            "trials": trials, "epochs": epochs, "noise_lines": len(noise), "noise": noise[:3],
            **({"error": output[-1500:]} if done.returncode else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES),
                        help="default: small larger")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of off, on, auto per study (default: 1)")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="tunefm-cache-")
    os.environ["TUNEFM_CACHE_DIR"] = cache  # this process's warm-up and the searches share it
    env = {**os.environ, "TUNEFM_CACHE_DIR": cache}
    runs, decision_s = [], {}
    with tempfile.TemporaryDirectory(prefix="tunefm-fusion-search-") as folder:
        for study in args.studies:
            print(f"== {study}: warming the calibration cache", flush=True)
            decision_s[study] = warm_calibration(STUDIES[study])
            for repeat in range(args.repeats):
                for mode in MODES:
                    runs.append({"study": study, "repeat": repeat + 1,
                                 **run_search(STUDIES[study], mode, Path(folder), env)})
    rows = []
    for study in args.studies:
        walls = {m: [r["wall_s"] for r in runs if r["study"] == study and r["mode"] == m and r["returncode"] == 0]
                 for m in MODES}
        median = {m: statistics.median(v) if v else None for m, v in walls.items()}
        fusion = {m: next((r["fusion"] for r in runs if r["study"] == study and r["mode"] == m), "") for m in MODES}
        rows.append({"study": study, "command": "tunefm search " + " ".join(STUDIES[study]),
                     **{f"{m}_s": median[m] for m in MODES},
                     "on_vs_off": round(median["on"] / median["off"], 3) if median["on"] and median["off"] else None,
                     "auto_vs_off": round(median["auto"] / median["off"], 3) if median["auto"] and median["off"] else None,
                     "on_decided": fusion["on"].removeprefix("Fusion: "),
                     "auto_decided": fusion["auto"].removeprefix("Fusion: "),
                     "auto_decision_s": round(decision_s[study], 3),
                     "noise_lines": sum(r["noise_lines"] for r in runs if r["study"] == study)})
    lines = ["| study | --fuse off | on | auto | on / off | auto / off | auto decided | auto's decision | Ray lines |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        walls = {m: ", ".join(f"{x['wall_s']:.1f}" for x in runs if x["study"] == r["study"] and x["mode"] == m)
                 for m in MODES}
        lines.append(f"| {r['study']} | {r['off_s']} s ({walls['off']}) | {r['on_s']} s ({walls['on']}) | "
                     f"{r['auto_s']} s ({walls['auto']}) | {r['on_vs_off']} | "
                     f"{r['auto_vs_off']} | {r['auto_decided']} | {r['auto_decision_s']} s | {r['noise_lines']} |")
    notes = ("Wall clock of each whole `tunefm search` command (a fresh process: Ray's start, the search, the "
             f"test evaluation), the median of {args.repeats} run(s) per mode (each run in brackets), modes in "
             "turn. The studies:\n\n"
             + "\n".join(f"- {r['study']}: `{r['command']}`" for r in rows)
             + "\n\nauto's decision: what `--fuse auto` adds to a search before it starts, timed here with the "
               "calibration cache warm (the study's configs estimated alone and fused). Where auto decides off, "
               "the search that follows is off's own, so a difference between the auto and off columns there is "
               "the machine's run-to-run spread (compare the runs in brackets), not auto's doing."
             + "\n\nRay lines: output lines that are not tunefm's (Ray worker or raylet output), over every run.")
    common.write(args.out, "fusion-search", "Whole searches with --fuse off, on and auto", common.machine(), rows,
                 "\n".join(lines) + "\n", notes, runs=runs)


if __name__ == "__main__":
    main()
