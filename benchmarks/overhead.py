"""Per-trial overhead: 50 trivial one-epoch trials under tunefm's settings and under Ray Tune's defaults.

    python benchmarks/overhead.py                   # 50 trials each way
    python benchmarks/overhead.py --trials 20
    python benchmarks/overhead.py --setups tunefm --trials 2000 --small 200 --name overhead-2000   # a large study

A trivial trial is tunefm's own trainable on 64 training and 64 validation images for
one epoch of `iaro1`: milliseconds of training, so the wall time is almost all
overhead. Three runs on one local Ray, each at the concurrency its resources allow:
  - tunefm:   `tunefm search` itself (`search.run`; the time in its Tuner.fit): actor
              reuse, the Parquet writer, the progress line, TensorBoard, checkpoint retention;
  - defaults: the same trainable and grid in a Tuner with Ray Tune's defaults: a new
              actor per trial (which imports torch again), Tune's default loggers;
  - floor:    a function that only reports, with actor reuse: Ray Tune's own cost.
Overhead per trial = (wall time of `Tuner.fit` x concurrent trials - time spent in the
trials' epochs) / trials: the trial-slot seconds that went to something else. It
includes each setup's one-off start (with actor reuse, starting the first actors and
importing torch in them: a few seconds in all); the marginal overhead leaves that out,
from a second run of each setup with --small trials: (slot-seconds of the big run -
those of the small one) / (the difference in trials). For tunefm's setup it also reports
the wall seconds per trial over the first and the last tenth of the big run's trials (by
start time): a cost that grows with the study shows as a later tenth slower than the first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import common
from ray import tune

from tunefm.engine import data
from tunefm.run import store
from tunefm.tune import lifecycle, search
from tunefm.tune.settings import SearchSettings
from tunefm.tune.trial import tune_trainable

LRS_FROM, LRS_STEP = 0.001, 0.0001  # a grid of distinct learning rates: one trial each


def settings_for(trials: int, results: Path, data_dir: str | None) -> SearchSettings:
    lrs = ",".join(f"{LRS_FROM + i * LRS_STEP:.4f}" for i in range(trials))
    return SearchSettings(space="fourfam", name="overhead", results_dir=str(results), data_dir=data_dir,
                                 train_size=64, val_size=64, test_size=10, max_epochs=1, test_top=0, fuse="off",
                                 sets=("model=iaro1", "batch_size=64", f"lr={lrs}"))


def fit_seconds(tuner) -> tuple[float, object]:
    started = time.perf_counter()
    results = tuner.fit()
    return time.perf_counter() - started, results


def tunefm_run(settings: SearchSettings) -> tuple[float, float, int, dict]:
    wall, run_dir = common.tunefm_fit(settings)
    epochs = store.read_epochs(run_dir)
    return wall, float(epochs["epoch_time_s"].sum()), epochs["trial_id"].nunique(), pace(store.read_trials(run_dir))


def pace(trials) -> dict:
    """Wall seconds per trial (all slots together) over the first and the last tenth of the
    trials by start time: whether a trial costs more late in a study than early."""
    starts = trials["started_at"].dropna().sort_values().to_numpy()
    tenth = max(2, len(starts) // 10)
    first, last = starts[:tenth], starts[-tenth:]
    return {"first_tenth_s_per_trial": round(float(first[-1] - first[0]) / (tenth - 1), 4),
            "last_tenth_s_per_trial": round(float(last[-1] - last[0]) / (tenth - 1), 4)}


def ray_defaults() -> None:
    """Undo tunefm's environment for Tune (`search.quiet_tune_output`): Tune's own loggers back on."""
    os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)


def defaults_run(settings: SearchSettings, storage: Path) -> tuple[float, float, int]:
    ray_defaults()
    study = search.build_study(settings)
    splits = data.load(settings.data_dir, settings.train_size, settings.val_size, settings.test_size)
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    param_space, _, _ = study.search.search_alg(study, settings.seed, settings.concurrency)
    tuner = tune.Tuner(tune.with_parameters(tune_trainable, arrays=arrays, max_epochs=1), param_space=param_space,
                       run_config=tune.RunConfig(name="defaults", storage_path=str(storage), verbose=0))
    wall, results = fit_seconds(tuner)
    return wall, float(sum(r.metrics["epoch_time_s"] for r in results)), len(results), {}


def report_only(config):
    tune.report({"epoch": 1})


def floor_run(trials: int, storage: Path) -> tuple[float, float, int]:
    ray_defaults()
    tuner = tune.Tuner(report_only, param_space={"i": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(reuse_actors=True),
                       run_config=tune.RunConfig(name="floor", storage_path=str(storage), verbose=0))
    wall, results = fit_seconds(tuner)
    return wall, 0.0, len(results), {}


def row(name: str, what: str, big: tuple, small: tuple, slots: int) -> dict:
    (wall, training, trials, big_pace), (small_wall, small_training, small_trials, _) = big, small
    idle = wall * slots - training  # trial-slot seconds not spent in epochs
    small_idle = small_wall * slots - small_training
    return {"setup": name, "what": what, "trials": trials, "concurrency": slots, "wall_s": round(wall, 2),
            "training_s": round(training, 3), "overhead_per_trial_s": round(idle / trials, 3),
            "small_trials": small_trials, "small_wall_s": round(small_wall, 2),
            "small_overhead_per_trial_s": round(small_idle / small_trials, 3),
            "marginal_overhead_per_trial_s": round((idle - small_idle) / (trials - small_trials), 3), **big_pace}


def table(rows: list[dict]) -> str:
    lines = ["| setup | what | trials | concurrent | Tuner.fit wall s | in epochs s | overhead per trial s | "
             "smaller run: trials, overhead per trial s | marginal s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setup']} | {r['what']} | {r['trials']} | {r['concurrency']} | {r['wall_s']:.1f} | "
                     f"{r['training_s']:.2f} | **{r['overhead_per_trial_s']:.3f}** | {r['small_trials']}: "
                     f"{r['small_overhead_per_trial_s']:.3f} | {r['marginal_overhead_per_trial_s']:.3f} |")
    for r in rows:
        if "first_tenth_s_per_trial" in r:
            lines.append(f"\n{r['setup']}, {r['trials']} trials: {r['first_tenth_s_per_trial']:.4f} s per trial over the "
                         f"first tenth (by start time), {r['last_tenth_s_per_trial']:.4f} s over the last tenth "
                         f"({r['last_tenth_s_per_trial'] / r['first_tenth_s_per_trial']:.2f}x).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="trials per setup (default: 50)")
    parser.add_argument("--small", type=int, default=10, help="trials of the second, smaller run (default: 10)")
    parser.add_argument("--data-dir", default=None, help="default: $TUNEFM_DATA_DIR, else the cache")
    parser.add_argument("--setups", nargs="+", default=["tunefm", "defaults", "floor"],
                        choices=["tunefm", "defaults", "floor"], help="which setups to run (default: all three)")
    parser.add_argument("--name", default="overhead", help="results file name (default: overhead)")
    parser.add_argument("--out", default="results/benchmarks", help="default: results/benchmarks")
    args = parser.parse_args()

    slots = os.cpu_count()  # one CPU per trial, as both tunefm and Tune's defaults ask
    rows = []
    with lifecycle.ray_session(None, num_cpus=slots, include_dashboard=False, log_to_driver=False), \
            tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        search.quiet_tune_output()
        setups = [
            ("tunefm", "tunefm", "`tunefm search`: actor reuse, Parquet, progress, TensorBoard",
             lambda n, tag: tunefm_run(settings_for(n, root / f"results-{tag}", args.data_dir))),
            ("defaults", "Ray Tune defaults", "same trainable and grid; new actor per trial",
             lambda n, tag: defaults_run(settings_for(n, root / f"results-{tag}", args.data_dir), root / f"d-{tag}")),
            ("floor", "floor", "a function that only reports, actor reuse", lambda n, tag: floor_run(n, root / f"f-{tag}")),
        ]
        for key, name, what, run in setups:
            if key not in args.setups:
                continue
            rows.append(row(name, what, run(args.trials, "big"), run(args.small, "small"), slots))
            print(rows[-1], flush=True)
        info = common.machine("cpu")
    common.write(args.out, args.name, "Per-trial overhead", info, rows, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
