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
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import random
import shutil
import socket
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from tunefm import data, models, store
from tunefm import study as studies
from tunefm.errors import UserError


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
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0
    sets: tuple[str, ...] = field(default_factory=tuple)
    test_top: int | None = None  # configs per model evaluated on the test set afterwards (the study's); 0: none
    flush_interval_s: float = 5.0

    def validate(self) -> None:
        checks = [
            (self.max_epochs is None or self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}"),
            (self.num_samples is None or self.num_samples >= 1, f"--num-samples must be >= 1, got {self.num_samples}"),
            (self.concurrency is None or self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}"),
            (self.gpus_per_trial is None or self.gpus_per_trial >= 0,
             f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}"),
            (self.grace_period >= 1, f"--grace-period must be >= 1, got {self.grace_period}"),
            (self.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {self.reduction_factor}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.test_top is None or self.test_top >= 0, f"--test-top must be >= 0, got {self.test_top}"),
            (self.name is None or (self.name and "/" not in self.name and self.name not in (".", "..")),
             f"--name must be a plain folder name, got {self.name!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


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
        if "seed" not in overrides and "seed" not in study.grid:
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
        raise UserError(f"run {run_dir} already exists; choose another --name")
    check_creatable(run_dir, "run folder")
    return run_dir


def check_creatable(folder: Path, what: str) -> None:
    """`folder` can be made: its nearest existing ancestor is a writable folder."""
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        problem = "is not a folder" if not ancestor.is_dir() else "is not writable"
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


def trial_resources(cpus: float, gpus_per_trial: float | None, cluster_has_gpus: bool) -> Callable[[dict], object]:
    """config -> PlacementGroupFactory: each model's GPU share unless --gpus-per-trial says otherwise."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    def resources(config: dict):
        gpu = gpus_per_trial if gpus_per_trial is not None else models.get(config["model"]).gpu_fraction
        bundle = {"CPU": cpus}
        if cluster_has_gpus and gpu > 0:
            bundle["GPU"] = gpu
        return PlacementGroupFactory([bundle])

    return resources


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected Ray cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def launchable_nodes() -> list[dict[str, float]]:
    """Resources of each node type the cluster's autoscaler may still launch (none without one).

    A `ray up` cluster starts its GPU workers on demand: a search must count them as
    nodes to come, not refuse to run. Ray publishes them only through a private API,
    so anything unexpected there means "no autoscaler".
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]
    except Exception:
        return []


def local_node() -> list[dict[str, float]]:
    """What a local Ray would detect here, known before starting one."""
    import torch

    return [{"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}]


def check_resources_fit(cpus: float, gpus: float | None, nodes: list[dict[str, float]]) -> None:
    """Fail now, not pending forever, when no node can ever hold one trial."""
    need = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    for resource, amount in need.items():
        most = max((n.get(resource, 0) for n in nodes), default=0)
        if most < amount:
            flag = "--cpus-per-trial" if resource == "CPU" else "--gpus-per-trial"
            raise UserError(f"{flag} {amount:g} can never be met: the largest node has {most:g} {resource}")


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


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a host:port with nothing listening; ray.init would retry for minutes."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return  # ray.init itself fails fast on 'auto' with no cluster; ray:// is Ray Client's
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"no Ray cluster answers at --address {address} ({e.strerror or e}); "
                        f"start one with `ray start --head` or give its head node's address") from None


def start_ray(address: str | None) -> tuple[bool, str | None]:
    """Join `address`, or start a local Ray; returns (we started it, dashboard URL).

    A local Ray gets its dashboard on 127.0.0.1 only, with token authentication on
    (Ray's local default since 2.59 when RAY_AUTH_MODE is unset; `run` warns when it is
    off); the token is in ~/.ray/auth_token and `ray get-auth-token` prints it.
    """
    import ray

    if address:
        check_reachable(address)
    if ray.is_initialized():
        return False, None
    try:
        # Ray's own "Connected"/"Started" lines and its "token authentication is enabled"
        # notice repeat what tunefm prints itself, and would make a user error two lines.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        quiet = dict(log_to_driver=True, logging_level=logging.WARNING)
        if address:
            context = ray.init(address=address, **quiet)
        else:
            context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise UserError(f"could not start or join {where}: {str(e).splitlines()[0]}") from None
    url = getattr(context, "dashboard_url", None)
    return True, (f"http://{url}" if url and not url.startswith("http") else url)


def search_algorithm(study: studies.Study, settings: SearchSettings) -> tuple[dict, object, int]:
    """(param_space, search algorithm, num_samples) for the study's searcher."""
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
    configs = trial_order(study.configs(), settings.seed)
    # Each config pins every key, so each is exactly one trial, started in this order;
    # the space only declares each varied key's values.
    varied = {k: list(dict.fromkeys(c[k] for c in configs if k in c))
              for k in {k for c in configs for k in c} - set(base)}
    param_space = {**base, **{k: tune.grid_search(v) for k, v in varied.items()}}
    return param_space, BasicVariantGenerator(points_to_evaluate=configs), len(configs)


def make_tuner(study: studies.Study, settings: SearchSettings, splits: data.Splits, run_dir: Path,
               storage_path: str, cluster_has_gpus: bool, echo: Callable[[str], None]):
    """The Tuner: trainable with data and resources, scheduler, trial order, callbacks, storage."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tunefm.progress import ProgressLine
    from tunefm.recorder import ParquetRecorder
    from tunefm.tensorboard import TensorBoardWriter
    from tunefm.trainable import tune_trainable

    arrays = {"train_x": splits.train_x, "train_y": splits.train_y,
              "val_x": splits.val_x, "val_y": splits.val_y}  # the test set never reaches a trial
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, arrays=arrays, max_epochs=study.max_epochs),
        trial_resources(settings.cpus_per_trial, settings.gpus_per_trial, cluster_has_gpus),
    )
    if settings.early_stop:
        scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_acc", mode="max",
                                  max_t=study.max_epochs, grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    param_space, search_alg, num_samples = search_algorithm(study, settings)
    writer = store.RunWriter(run_dir, study.max_epochs, study.config_keys(), settings.flush_interval_s)
    # Keeping only the best and latest checkpoint forces a state snapshot per checkpoint;
    # Tune warns about that each time, which is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console output prints a settings box, and a TensorBoard path into its
    # staging folder, even at verbose=0; the older one is silent at 0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=None if study.searcher == "hyperopt" else settings.concurrency,
            reuse_actors=True,  # a new actor per trial re-imports torch: seconds each
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=store.TUNE_DIR,
            storage_path=storage_path,
            callbacks=[ParquetRecorder(writer), ProgressLine(study.num_trials, study.max_epochs, echo),
                       TensorBoardWriter(run_dir / store.TENSORBOARD_DIR)],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max"),
            verbose=0,  # ProgressLine prints one line instead of Tune's per-trial tables
        ),
    )


def run(settings: SearchSettings, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Validate, run the study on Ray, write the run folder; returns the trials table."""
    settings.validate()
    study = build_study(settings)
    splits = data.load(settings.data_dir, settings.train_size, settings.val_size, settings.test_size)
    run_dir = choose_run_dir(settings, study)
    storage_path = tune_parent(run_dir, settings.storage)
    tune_dir = f"{storage_path}/{store.TUNE_DIR}"

    import ray

    if not settings.address and not ray.is_initialized():
        # A local Ray would detect these; refusing now spares its start-up and logs.
        check_resources_fit(settings.cpus_per_trial, settings.gpus_per_trial, local_node())
    started_ray, dashboard = start_ray(settings.address)
    try:
        nodes, to_come = cluster_nodes(), launchable_nodes()
        check_resources_fit(settings.cpus_per_trial, settings.gpus_per_trial, nodes + to_come)
        create_run_dir(run_dir)
        try:
            tuner = make_tuner(study, settings, splits, run_dir, storage_path,
                               any(n.get("GPU", 0) > 0 for n in nodes + to_come), echo)
        except Exception as e:  # Tune creates its experiment folder here, in the run folder or the storage
            shutil.rmtree(run_dir, ignore_errors=True)  # made a moment ago by this command, nothing in it yet
            if settings.storage is None:
                raise
            raise UserError(f"cannot use --storage {settings.storage}: {str(e).splitlines()[0]}") from None
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    token_auth = auth_mode() == "token"
    if dashboard:
        echo(f"Ray dashboard: {dashboard}" + ("   (token: `ray get-auth-token`)" if token_auth else ""))
    if not token_auth and not settings.address:
        echo("Warning: RAY_AUTH_MODE=disabled: the dashboard and Ray's ports accept anyone who can reach them")
    if settings.storage is None and (len(nodes) > 1 or to_come):
        echo(f"Warning: a cluster of {len(nodes)} node(s) and no --storage: trials on other nodes keep their "
             f"checkpoints on their own disks, where resuming and the test evaluation cannot find them; "
             f"give --storage s3://bucket/path or a folder every node shares (docs/cluster.md)")
    run_info = {
        "study": study.record(),
        "options": asdict(settings),
        "data": {"source": splits.source, "sizes": splits.sizes(), "sha256": splits.checksums},
        "versions": versions(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "dashboard_url": dashboard,
        "storage": tune_dir if settings.storage else None,  # None: <run folder>/tune
        "nodes": len(nodes),
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "status": "running",
    }
    try:
        store.write_json(run_info, run_dir / store.RUN_FILE)
        echo(f"Running {study.num_trials} trials of study {study.name!r} into {run_dir}")
        echo(f"TensorBoard: tensorboard --logdir {run_dir / store.TENSORBOARD_DIR}")
        results = tuner.fit()
        run_info["status"] = "completed" if not results.errors else "completed with errors"
        run_info["failed_trials"] = len(results.errors)
        if study.test_top:
            from tunefm import evaluate

            evaluation = evaluate.evaluate_trials(run_dir, splits.test_x, splits.test_y, study.test_top, echo,
                                                  tune_dir=tune_dir)
            run_info["evaluation"] = evaluation.record()
        return SearchOutcome(run_dir, store.read_trials(run_dir))
    except BaseException as e:
        run_info["status"] = "failed"
        run_info["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise
    finally:
        run_info["finished_at"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        store.write_json(run_info, run_dir / store.RUN_FILE)
        if started_ray:
            ray.shutdown()


def auth_mode() -> str:
    """Ray's token authentication for this process: 'token' or 'disabled'."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode

        return "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"
    except ImportError:  # a Ray without token authentication
        return "disabled"
