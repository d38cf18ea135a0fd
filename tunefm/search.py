"""Build and run the Ray Tune search for a study; the library behind `tunefm search`.

    settings = SearchSettings(space="fourfam", max_epochs=3, train_size=3000, val_size=1000)
    outcome = search.run(settings)
    outcome.run_dir, outcome.trials        # results/fourfam-<time>/, a DataFrame

Everything the user gave is validated (study, --set, sizes, data files, run folder,
--storage) before Ray starts or anything is written. Then: a local Ray (dashboard on
127.0.0.1, token authentication on) or the cluster at `--address`; a resource check
against every node, counting those an autoscaler may still start; the data into the
object store once; one trial per grid point (or per hyperopt TPE draw) with resources
from its model (a GPU fraction where the cluster has GPUs); ASHA on val_acc unless early
stopping is off; callbacks streaming every epoch into Parquet and TensorBoard; and
checkpoints in the run folder's tune/, or under `--storage` for a multi-node cluster.
A trial whose worker dies is retried from its last checkpoint (`--max-failures`).
Ctrl-C or SIGTERM stops it cleanly (`interrupt.py`), and `resume.py` continues it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import random
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from tunefm import cluster, data, interrupt, store
from tunefm import study as studies
from tunefm.errors import Interrupted, UserError
from tunefm.run_writer import RunWriter


@dataclass(frozen=True)
class SearchSettings:
    """Options of one search; defaults match the CLI's."""

    space: str = "fourfam"
    name: str | None = None  # default: <space>-<timestamp>
    results_dir: str = "results"
    data_dir: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    max_epochs: int | None = None  # default: the study's
    num_samples: int | None = None  # grid: seeds per grid point (1); hyperopt: configs to try (the study's)
    concurrency: int | None = None  # default: as many as resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # default: each model's own fraction, where GPUs exist
    address: str | None = None  # default: start a local Ray
    storage: str | None = None  # default: checkpoints in the run folder; a cluster needs a shared URI
    early_stop: bool = True
    max_failures: int = 2  # retries of a trial whose worker fails, each from its last checkpoint
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0
    sets: tuple[str, ...] = field(default_factory=tuple)
    test_top: int | None = None  # configs per model evaluated on the test set afterwards (the study's); 0: none
    flush_interval_s: float = 5.0
    loop: str = "auto"  # how trials' steps run (loops.py): measured per machine and shape, or pinned
    fuse: str = "auto"  # train same-shape trials as one stacked model (placement.py): auto | on | off
    group_size: int | None = None  # fused: trials per CPU slot or GPU (default: calibrated / 16 per GPU)
    keep_checkpoints: str = "best"  # retention.py: best | all

    def validate(self) -> None:
        checks = [
            (self.max_epochs is None or self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}"),
            (self.num_samples is None or self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.concurrency is None or self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}"),
            (self.gpus_per_trial is None or self.gpus_per_trial >= 0,
             f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}"),
            (self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}"),
            (self.grace_period >= 1, f"--grace-period must be >= 1, got {self.grace_period}"),
            (self.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {self.reduction_factor}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.test_top is None or self.test_top >= 0, f"--test-top must be >= 0, got {self.test_top}"),
            (self.group_size is None or self.group_size >= 2, f"--group-size must be >= 2, got {self.group_size}"),
            (self.name is None or (self.name and "/" not in self.name and self.name not in (".", "..")),
             f"--name must be a plain folder name, got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        from tunefm import loops, placement, retention

        loops.check(self.loop)
        placement.check_mode(self.fuse)
        retention.check_policy(self.keep_checkpoints)


@dataclass
class SearchOutcome:
    run_dir: Path
    trials: pd.DataFrame


def build_study(settings: SearchSettings) -> studies.Study:
    """The study with --set, --seed, --num-samples, --max-epochs and --test-top applied.

    --num-samples is seeds per grid point for a grid study, and the number of configs
    hyperopt draws for a hyperopt study (whose trials all use --seed).
    """
    study = studies.load(settings.space)
    overrides = studies.parse_sets(settings.sets)
    if study.searcher == "hyperopt":
        overrides.setdefault("seed", [settings.seed])
        study = study.with_overrides(overrides)
        if settings.num_samples is not None:
            study = replace(study, num_samples=settings.num_samples)
    else:
        num_samples = settings.num_samples or 1
        if "seed" in overrides and num_samples > 1:
            raise UserError("give either --set seed=... or --num-samples, not both")
        study_seeds = "seed" in study.grid or "seed" in study.fixed or any("seed" in v for v in study.variants)
        if "seed" not in overrides and (not study_seeds or num_samples > 1):  # a study's own seeds stay
            overrides["seed"] = [settings.seed + i for i in range(num_samples)]
        study = study.with_overrides(overrides)
    if settings.max_epochs is not None:
        study = study.with_max_epochs(settings.max_epochs)
    if settings.test_top is not None:
        study = replace(study, test_top=settings.test_top)
    return study


def choose_run_dir(settings: SearchSettings, study: studies.Study) -> Path:
    """The new run's folder; refuses an existing one, so no earlier run is touched."""
    name = settings.name or f"{study.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(settings.results_dir).expanduser() / name
    if run_dir.exists():
        raise UserError(f"run {run_dir} already exists; choose another --name, or add --resume to continue it")
    check_creatable(run_dir, "run folder")
    return run_dir


def check_creatable(folder: Path, what: str) -> None:
    """`folder` can be made: its nearest existing ancestor is a folder we can write in."""
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = "is not a folder" if not ancestor.is_dir() else None
    if problem is None:
        try:  # os.access says yes to root everywhere, even on /proc or a read-only mount: try it
            os.rmdir(tempfile.mkdtemp(prefix=".tunefm-", dir=ancestor))
        except OSError:
            problem = "is not writable"
    if problem:
        raise UserError(f"cannot create {what} {folder}: {ancestor} {problem}")


# pyarrow file systems that Ray Tune can keep checkpoints on
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


def tune_parent(run_dir: Path, storage: str | None) -> str:
    """The folder (a path or URI) that holds this run's Tune experiment folder `tune/`
    (checkpoints): the run folder itself, or `<storage>/<run name>`.

    Checked through pyarrow, the file systems Tune itself uses, before Ray starts: the
    scheme, that the place answers (a bucket's region, credentials), and that it holds no
    run of this name yet.
    """
    if storage is None:
        return str(run_dir.resolve())
    scheme = urlparse(storage).scheme if "://" in storage else ""
    if scheme and scheme not in STORAGE_SCHEMES:
        raise UserError(f"--storage {storage}: unknown scheme {scheme + '://'!r}; give a folder every node "
                        f"can reach (NFS) or a URI such as s3://bucket/path or gs://bucket/path")
    if scheme in ("", "file"):  # a local or mounted folder: as an absolute path
        root = str(Path(urlparse(storage).path if scheme else storage).expanduser().resolve())
    else:
        root = storage.rstrip("/")
    parent = f"{root}/{run_dir.name}"
    try:
        fs, path = pafs.FileSystem.from_uri(parent)
        taken = fs.get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"cannot use --storage {storage}: {str(e).splitlines()[0]}") from None
    if taken:
        raise UserError(f"--storage already holds a run named {run_dir.name} ({parent}); choose another --name")
    if isinstance(fs, pafs.LocalFileSystem):
        check_creatable(Path(path), "storage folder")
    return parent


def create_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None


def versions() -> dict[str, str]:
    import ray
    import torch

    try:
        own = metadata.version("tunefm")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"tunefm": own, "ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version()}


HYPEROPT_CONCURRENCY = 4  # default trials at once for a hyperopt study


def trial_order(configs: list[dict], seed: int) -> list[dict]:
    """The grid in a seeded random order.

    ASHA judges a trial against the trials that reached the same epoch before it. In
    grid order the first trials are one corner of the grid (the smallest learning
    rates, say), so early cutoffs are set by the worst configurations and almost
    nothing is stopped; a shuffled order gives every rung a representative sample.
    """
    order = random.Random(seed).sample(range(len(configs)), len(configs))
    return [configs[i] for i in order]


def search_algorithm(study: studies.Study, settings: SearchSettings, fused: bool = False) -> tuple[dict, object, int]:
    """(param_space, search algorithm, num_samples) for the study's searcher. `fused`: a grid's
    trials ordered so that each shape's trials run together (`placement.fused_order`)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    base = study.base_config()
    if study.searcher == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        algorithm = HyperOptSearch(metric="val_acc", mode="max", n_initial_points=study.initial_points,
                                   points_to_evaluate=[dict(p) for p in study.points_to_evaluate] or None,
                                   random_state_seed=settings.seed)
        # TPE learns from finished trials: running all at once would make it random search.
        limit = settings.concurrency or study.concurrency or HYPEROPT_CONCURRENCY
        return {**base, **study.space}, ConcurrencyLimiter(algorithm, max_concurrent=limit), study.num_samples
    if fused:
        from tunefm import placement

        configs = placement.fused_order(study.configs(), settings.seed)
    else:
        configs = trial_order(study.configs(), settings.seed)
    # Each config pins every key, so each is exactly one trial, started in this order;
    # the space only declares each varied key's values.
    varied = {k: list(dict.fromkeys(c[k] for c in configs if k in c))
              for k in {k for c in configs for k in c} - set(base)}
    param_space = {**base, **{k: tune.grid_search(v) for k, v in varied.items()}}
    # --concurrency goes here: Tune ignores `max_concurrent_trials` next to a search generator.
    return (param_space, BasicVariantGenerator(points_to_evaluate=configs, max_concurrent=settings.concurrency or 0),
            len(configs))


def make_trainable(study: studies.Study, settings: SearchSettings, splits: data.Splits, cluster_has_gpus: bool,
                   fusion: "Fusion | None" = None):
    """The trial function with the data (into the object store once) and its resources; a
    fused trial's function and share of a slot where the search fuses."""
    from ray import tune

    from tunefm.trainable import tune_trainable

    if fusion is not None:
        from tunefm import placement

        return placement.member_trainable_for(fusion.running.name, settings.cpus_per_trial, fusion.decision,
                                              cluster_has_gpus)

    arrays = {"train_x": splits.train_x, "train_y": splits.train_y,
              "val_x": splits.val_x, "val_y": splits.val_y}  # the test set never reaches a trial
    return tune.with_resources(
        tune.with_parameters(tune_trainable, arrays=arrays, max_epochs=study.max_epochs, loop=settings.loop),
        cluster.trial_resources(settings.cpus_per_trial, settings.gpus_per_trial, cluster_has_gpus),
    )


def make_scheduler(study: studies.Study, settings: SearchSettings, earlier_epochs: pd.DataFrame | None = None):
    """ASHA on val_acc per epoch (or FIFO without early stopping).

    Tune does not save a scheduler's state with the experiment, so a resumed search
    replays the epochs written so far (`earlier_epochs`): ASHA's rungs then hold what
    they held when the search stopped, and judge the remaining trials the same way.
    """
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not settings.early_stop:
        return FIFOScheduler()
    # "epoch" (the trainable's count) rather than Tune's training_iteration: the same after a resume.
    scheduler = ASHAScheduler(time_attr="epoch", metric="val_acc", mode="max",
                              max_t=study.max_epochs, grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
    if earlier_epochs is not None:
        for trial_id, history in earlier_epochs.sort_values("epoch").groupby("trial_id"):
            trial = SimpleNamespace(trial_id=trial_id)
            scheduler.on_trial_add(None, trial)
            for epoch, val_acc in zip(history["epoch"], history["val_acc"]):
                scheduler.on_trial_result(None, trial, {"epoch": int(epoch), "val_acc": float(val_acc)})
    return scheduler


def make_callbacks(study: studies.Study, settings: SearchSettings, writer: RunWriter, run_dir: Path,
                   echo: Callable[[str], None], earlier_trials: pd.DataFrame | None = None,
                   fusion: "Fusion | None" = None, pruning=None) -> list:
    """Parquet, the progress line and TensorBoard, all fed by the driver as results arrive;
    plus Tune's own JSON and CSV loggers (each trial's result.json and progress.csv), but
    not its TensorBoard logger, which would write every scalar a second time; and the
    deletion of checkpoints that are not kept (`pruning`, a retention.Pruning; after the
    Parquet writer, which knows each trial's best epoch)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from tunefm.progress import ProgressLine
    from tunefm.recorder import ParquetRecorder
    from tunefm.tensorboard import TensorBoardWriter

    callbacks = [ParquetRecorder(writer),
                 ProgressLine(study.num_trials, study.max_epochs, echo, max_failures=settings.max_failures,
                              earlier=earlier_trials),
                 TensorBoardWriter(run_dir / store.TENSORBOARD_DIR), JsonLoggerCallback(), CSVLoggerCallback()]
    if fusion is not None:
        from tunefm import placement

        callbacks.append(placement.Membership(fusion.running.name))
    if pruning is not None:  # retention.Pruning
        callbacks.append(pruning.callback(writer.best_epoch))
    return callbacks


def quiet_tune_output() -> None:
    """Environment for Tune's console output: tunefm prints its own progress and errors."""
    # Tune's newer console output prints a settings box, and a TensorBoard path into its
    # staging folder, even at verbose=0; the older one is silent at 0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # A retried trial is one warning line from ProgressLine; its traceback stays in tune/<trial>/error.txt.
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # make_callbacks adds the loggers it wants itself (not Tune's second TensorBoard).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    interrupt.quiet_tune_stop_messages()


def make_tuner(study: studies.Study, settings: SearchSettings, splits: data.Splits, run_dir: Path,
               storage_path: str, cluster_has_gpus: bool, writer: RunWriter, echo: Callable[[str], None],
               fusion: "Fusion | None" = None, pruning=None):
    """The Tuner: trainable with data and resources, scheduler, trial order, callbacks, storage."""
    from ray import tune

    param_space, search_alg, num_samples = search_algorithm(study, settings, fused=fusion is not None)
    quiet_tune_output()
    return tune.Tuner(
        make_trainable(study, settings, splits, cluster_has_gpus, fusion),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=make_scheduler(study, settings),
            search_alg=search_alg,
            num_samples=num_samples,
            reuse_actors=True,  # a new actor per trial re-imports torch: seconds each
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=store.TUNE_DIR,
            storage_path=storage_path,
            callbacks=make_callbacks(study, settings, writer, run_dir, echo, fusion=fusion,
                                     pruning=pruning or make_pruning(settings, f"{storage_path}/{store.TUNE_DIR}", study)),
            # Tune keeps every checkpoint; retention.Pruning deletes what is not kept (see there why).
            checkpoint_config=tune.CheckpointConfig(),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0,  # ProgressLine prints one line instead of Tune's per-trial tables
        ),
    )


def run(settings: SearchSettings, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Validate, run the study on Ray, write the run folder; returns the trials table.

    Raises `Interrupted` after Ctrl-C or SIGTERM, with the run folder resumable."""
    settings.validate()
    study = build_study(settings)
    splits = data.load(settings.data_dir, settings.train_size, settings.val_size, settings.test_size)
    run_dir = choose_run_dir(settings, study)
    storage_path = tune_parent(run_dir, settings.storage)
    tune_dir = f"{storage_path}/{store.TUNE_DIR}"

    import ray

    if not settings.address and not ray.is_initialized():
        # A local Ray would detect these; refusing now spares its start-up and logs.
        cluster.check_resources_fit(settings.cpus_per_trial, settings.gpus_per_trial, cluster.local_node())
    started_ray, dashboard = cluster.start_ray(settings.address)
    fusion = None
    try:
        nodes = cluster.connect(settings.cpus_per_trial, settings.gpus_per_trial)
        from tunefm import placement

        decision = placement.decide(settings.fuse, study.configs() if study.searcher == "grid" else None,
                                    nodes.has_gpus, settings.cpus_per_trial, settings.gpus_per_trial,
                                    settings.group_size, len(splits.train_y), study.max_epochs, settings.loop)
        create_run_dir(run_dir)
        writer = RunWriter(run_dir, study.max_epochs, study.config_keys(), settings.flush_interval_s)
        fusion = start_fusion(decision, run_dir.name, splits, settings, study)
        pruning = make_pruning(settings, tune_dir, study)
        try:
            tuner = make_tuner(study, settings, splits, run_dir, storage_path, nodes.has_gpus, writer, echo, fusion,
                               pruning)
        except Exception as e:  # Tune creates its experiment folder here, in the run folder or the storage
            shutil.rmtree(run_dir, ignore_errors=True)  # made a moment ago by this command, nothing in it yet
            if settings.storage is None:
                raise
            raise UserError(f"cannot use --storage {settings.storage}: {str(e).splitlines()[0]}") from None
    except BaseException:
        stop_fusion(fusion)
        if started_ray:
            ray.shutdown()
        raise
    cluster.announce(nodes, dashboard, settings.address, settings.storage, echo)
    echo(placement.describe(decision))
    run_info = {
        "study": study.record(),
        "options": asdict(settings),
        "data": {"source": splits.source, "sizes": splits.sizes(), "sha256": splits.checksums},
        "versions": versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "dashboard_url": dashboard,
        "ray_address": cluster.gcs_address(),
        "storage": tune_dir if settings.storage else None,  # None: <run folder>/tune
        "nodes": len(nodes.nodes),
        "fusion": decision.record(),
        "started_at": now(),
        "status": "running",
        "events": [event("started")],
    }
    return execute(tuner, writer, run_info, study, splits, settings, run_dir, tune_dir, started_ray, echo, fusion,
                   pruning)


def make_pruning(settings: SearchSettings, tune_dir: str, study: studies.Study):
    """The checkpoints this search deletes (retention.py). What the search's own test
    evaluation uses is always kept."""
    from tunefm import retention

    return retention.Pruning(tune_dir, settings.keep_checkpoints, max(retention.KEEP_TOP, study.test_top or 0))


@dataclass
class Fusion:
    """A fused search's decision and its running coordinator (placement.py)."""

    decision: object  # placement.Decision
    running: object  # placement.Running


def start_fusion(decision, run_name: str, splits: data.Splits, settings: SearchSettings,
                 study: studies.Study) -> Fusion | None:
    """The coordinator of a fused search (None where trials train alone)."""
    if not decision.fuse:
        return None
    from tunefm import placement

    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    return Fusion(decision, placement.start(run_name, arrays, settings, decision, study.max_epochs))


def stop_fusion(fusion: Fusion | None) -> None:
    if fusion is not None:
        from tunefm import placement

        placement.stop(fusion.running)


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def event(name: str, **details) -> dict:
    """One entry of run.json's "events": what happened to the run, when, in which process."""
    return {"event": name, "at": now(), "pid": os.getpid(), "host": socket.gethostname(), **details}


def execute(tuner, writer: RunWriter, run_info: dict, study: studies.Study, splits: data.Splits,
            settings: SearchSettings, run_dir: Path, tune_dir: str, started_ray: bool,
            echo: Callable[[str], None], fusion: Fusion | None = None, pruning=None) -> SearchOutcome:
    """Run the Tuner (new or restored), then evaluate the winners, then delete the checkpoints
    `pruning` (retention.Pruning) does not keep; keep run.json current.

    Ctrl-C or SIGTERM: Tune stops the trials and saves its state, the Parquet files are
    flushed with the running trials marked INTERRUPTED, run.json records the
    interruption, and `Interrupted` carries the command that resumes the run.
    """
    import ray

    stop = interrupt.GracefulStop()
    try:
        with stop:
            store.write_json(run_info, run_dir / store.RUN_FILE)
            echo(f"Running {study.num_trials} trials of study {study.name!r} into {run_dir}")
            echo(f"TensorBoard: tensorboard --logdir {run_dir / store.TENSORBOARD_DIR}")
            with stop.tune_loop():
                results = tuner.fit()
            if stop.signal:  # Tune ended its loop early and saved its state
                raise KeyboardInterrupt
            run_info["status"] = "completed" if not results.errors else "completed with errors"
            run_info["failed_trials"] = len(results.errors)
            if study.test_top:
                from tunefm import evaluate

                evaluation = evaluate.evaluate_trials(run_dir, splits.test_x, splits.test_y, study.test_top, echo,
                                                      tune_dir=tune_dir)
                run_info["evaluation"] = evaluation.record()
            if pruning is not None:
                if pruning.policy == "best":
                    pruning.after_search(store.read_trials(run_dir))
                    echo(pruning.describe())
                run_info["checkpoints"] = pruning.record()
            run_info["events"].append(event(run_info["status"]))
            return SearchOutcome(run_dir, store.read_trials(run_dir))
    except KeyboardInterrupt:
        writer.mark_interrupted()
        writer.flush()
        run_info["status"] = "interrupted"
        counts = writer.statuses()
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        paused = counts.get(store.INTERRUPTED, 0)
        signal_name = stop.signal or "SIGINT"
        run_info["events"].append(event("interrupted", signal=signal_name, trials_done=done))
        raise Interrupted(
            f"Interrupted by {signal_name}: {done} of {study.num_trials} trials finished, {paused} stopped at "
            f"their last checkpoint, {max(study.num_trials - done - paused, 0)} not started; results so far "
            f"are in {run_dir}",
            resume_command(settings, run_dir), signal_name) from None
    except BaseException as e:
        run_info["status"] = "failed"
        run_info["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        run_info["events"].append(event("failed", error=run_info["error"]))
        raise
    finally:
        run_info["finished_at"] = now()
        store.write_json(run_info, run_dir / store.RUN_FILE)
        stop_fusion(fusion)
        if started_ray:
            ray.shutdown()


def resume_command(settings: SearchSettings, run_dir: Path) -> str:
    """The command line that continues this run."""
    command = f"tunefm search --name {run_dir.name} --resume"
    if Path(settings.results_dir).expanduser().resolve() != Path("results").resolve():
        command += f" --results {settings.results_dir}"
    if settings.address:
        command += f" --address {settings.address}"
    return command

