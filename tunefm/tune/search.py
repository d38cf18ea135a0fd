"""Build and run the Ray Tune search for a study; the library behind `tunefm search`.

    settings = SearchSettings(space="fourfam", max_epochs=3, train_size=3000, val_size=1000)
    outcome = search.run(settings)
    outcome.run_dir, outcome.trials        # results/fourfam-<time>/, a DataFrame

Everything the user gave is validated (study, --set, sizes, data files, run folder,
--storage) before Ray starts or anything is written (`NewRun.make`). The run itself,
from Ray's start to run.json's last word, is `lifecycle.live`; this module supplies
what is particular to a new search, and the Tuner that resume.py builds too: the data
into the object store once; the trials the study's searcher proposes (tunefm/searchers/)
with resources from their model (a GPU fraction where the cluster has GPUs); ASHA on
val_acc, or MO-ASHA on --objectives (tune/stopping.py), unless early stopping is off;
callbacks streaming every epoch into Parquet and TensorBoard; and checkpoints in the run
folder's tune/, or under `--storage` for a multi-node cluster. A trial whose worker dies
is retried from its last checkpoint (`--max-failures`).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler

from tunefm import study as studies
from tunefm.engine import data
from tunefm.errors import UserError
from tunefm.run import store
from tunefm.run.record import RunRecord
from tunefm.run.writer import RunWriter
from tunefm.stopping import rules
from tunefm.tune import cluster, interrupt, lifecycle, placement
from tunefm.tune.lifecycle import Fusion, RaySession, SearchOutcome
from tunefm.tune.progress import ProgressLine
from tunefm.tune.recorder import ParquetRecorder
from tunefm.tune.settings import SearchSettings
from tunefm.tune.stopping import RuleScheduler
from tunefm.tune.tensorboard import TensorBoardWriter
from tunefm.tune.trial import tune_trainable


def build_study(settings: SearchSettings) -> studies.Study:
    """The study with --set, --seed, --num-samples, --max-epochs and --test-top applied.

    --num-samples is seeds per grid point for a grid study, and the number of configs to
    draw for a study that draws them (hyperopt, random; its trials all use --seed).
    """
    study = studies.load(settings.space)
    study = study.search.with_run_options(study, studies.parse_sets(settings.sets), settings.num_samples,
                                          settings.seed)
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


def make_trainable(study: studies.Study, settings: SearchSettings, splits: data.Splits, cluster_has_gpus: bool,
                   fusion: Fusion | None = None, tune_dir: str | None = None,
                   resume_at: Mapping[str, int] | None = None):
    """The trial function with the data (into the object store once) and its resources; a
    fused trial's function and share of a slot where the search fuses. A resumed search
    gives `tune_dir` and `resume_at` ({trial id: its last recorded epoch}): each trial
    continues from its newest checkpoint up to that epoch (`checkpoints.newer_state`)."""
    if fusion is not None:
        return placement.member_trainable_for(fusion.running.name, settings.cpus_per_trial, fusion.decision,
                                              placement.uses_gpus(cluster_has_gpus, settings.gpus_per_trial),
                                              tune_dir, resume_at)

    arrays = {"train_x": splits.train_x, "train_y": splits.train_y,
              "val_x": splits.val_x, "val_y": splits.val_y}  # the test set never reaches a trial
    return tune.with_resources(
        tune.with_parameters(tune_trainable, arrays=arrays, max_epochs=study.max_epochs, loop=settings.loop,
                             tune_dir=tune_dir, resume_at=resume_at),
        cluster.trial_resources(settings.cpus_per_trial, settings.gpus_per_trial, cluster_has_gpus),
    )


def stopping_rule(study: studies.Study, settings: SearchSettings) -> rules.RungRule | None:
    """The search's early-stopping rule: ASHA on val_acc, or on --objectives (MO-ASHA on
    several); None without early stopping."""
    if not settings.early_stop:
        return None
    return rules.for_objectives(settings.stopping_objectives(), study.max_epochs, settings.grace_period,
                                settings.reduction_factor)


def check_stopping(study: studies.Study, settings: SearchSettings) -> None:
    """The stopping options fit the study: a grace period within its epochs, and --objectives
    read by something (the stopping rule, or a searcher that optimizes objectives)."""
    study.search.check_objectives(study, settings.stopping_objectives())
    if settings.early_stop:
        stopping_rule(study, settings)  # a UserError for a grace period longer than the trials
    elif settings.objectives is not None and not study.search.reads_objectives:
        raise UserError(f"--objectives has nothing to judge: --no-early-stop turns off the stopping rule and "
                        f"the {study.searcher} searcher does not read objectives; drop one of them")


def make_scheduler(study: studies.Study, settings: SearchSettings, earlier_epochs: pd.DataFrame | None = None,
                   earlier_trials: pd.DataFrame | None = None):
    """The stopping rule as Tune's scheduler (FIFO without early stopping), rung by rung on
    `epoch` (the trainable's count, rather than Tune's training_iteration: the same after a
    resume).

    Tune does not save a scheduler's state with the experiment, so a resumed search
    replays the epochs written so far (`earlier_epochs`, with `earlier_trials`' facts):
    the rungs then hold what they held when the search stopped, and judge the remaining
    trials the same way.
    """
    rule = stopping_rule(study, settings)
    if rule is None:
        return FIFOScheduler()
    scheduler = RuleScheduler(rule)
    if earlier_epochs is not None and len(earlier_epochs):
        scheduler.replay(earlier_epochs, earlier_trials)
    return scheduler


def make_callbacks(study: studies.Study, settings: SearchSettings, writer: RunWriter, run_dir: Path,
                   echo: Callable[[str], None], earlier_trials: pd.DataFrame | None = None,
                   fusion: Fusion | None = None, pruning=None, stops: Mapping[str, int] | None = None) -> list:
    """Parquet, the progress line and TensorBoard, all fed by the driver as results arrive;
    plus Tune's own JSON and CSV loggers (each trial's result.json and progress.csv), but
    not its TensorBoard logger, which would write every scalar a second time; and the
    deletion of checkpoints that are not kept (`pruning`, a retention.Pruning; after the
    Parquet writer, which knows each trial's best epoch). `stops`: the stopping rule's
    {trial id: rung} (`RuleScheduler.stopped_at`), recorded with each trial it stops."""
    callbacks = [ParquetRecorder(writer, stops),
                 ProgressLine(study.num_trials, study.max_epochs, echo, max_failures=settings.max_failures,
                              earlier=earlier_trials),
                 TensorBoardWriter(run_dir / store.TENSORBOARD_DIR, study), JsonLoggerCallback(), CSVLoggerCallback()]
    if fusion is not None:
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
    # An optuna searcher's objective may be a trial column (time_per_epoch_s) that it computes
    # from the reported rows itself, so no result carries it; --objectives were checked already.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    interrupt.quiet_tune_stop_messages()


def make_tuner(study: studies.Study, settings: SearchSettings, splits: data.Splits, run_dir: Path,
               storage_path: str, cluster_has_gpus: bool, writer: RunWriter, echo: Callable[[str], None],
               fusion: Fusion | None, pruning):
    """The Tuner: trainable with data and resources, scheduler, the searcher's trials, callbacks, storage."""
    configs = study.search.configs(study)  # None: drawn as the search goes
    # Fused, same-shape trials start together to share groups; else the searcher's own order.
    configs = placement.fused_order(configs, settings.seed) if fusion is not None and configs is not None else None
    param_space, search_alg, num_samples = study.search.search_alg(study, settings.seed, settings.concurrency,
                                                                    configs, settings.stopping_objectives())
    quiet_tune_output()
    scheduler = make_scheduler(study, settings)
    return tune.Tuner(
        make_trainable(study, settings, splits, cluster_has_gpus, fusion),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            reuse_actors=True,  # a new actor per trial re-imports torch: seconds each
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=store.TUNE_DIR,
            storage_path=storage_path,
            callbacks=make_callbacks(study, settings, writer, run_dir, echo, fusion=fusion, pruning=pruning,
                                     stops=getattr(scheduler, "stopped_at", None)),
            # Tune keeps every checkpoint; retention.Pruning deletes what is not kept (see there why).
            checkpoint_config=tune.CheckpointConfig(),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            verbose=0,  # ProgressLine prints one line instead of Tune's per-trial tables
        ),
    )


@dataclass
class NewRun:
    """A new search, checked and ready (`NewRun.make`); `lifecycle.live` runs it."""

    settings: SearchSettings
    study: studies.Study
    splits: data.Splits
    run_dir: Path
    storage_path: str  # the folder holding Tune's experiment folder

    @classmethod
    def make(cls, settings: SearchSettings) -> "NewRun":
        """Validate every option, the study, the data and the run folder; nothing is written."""
        settings.validate()
        study = build_study(settings)
        check_stopping(study, settings)
        splits = data.load(settings.data_dir, settings.train_size, settings.val_size, settings.test_size)
        run_dir = choose_run_dir(settings, study)
        return cls(settings, study, splits, run_dir, tune_parent(run_dir, settings.storage))

    @property
    def tune_dir(self) -> str:
        return f"{self.storage_path}/{store.TUNE_DIR}"

    def placement(self, session: RaySession) -> placement.Decision:
        settings = self.settings
        cluster = session.cluster
        return placement.decide(settings.fuse, self.study.search.configs(self.study), cluster.has_gpus,
                                settings.cpus_per_trial, settings.gpus_per_trial, settings.group_size,
                                len(self.splits.train_y), self.study.max_epochs, settings.loop,
                                slots=cluster.cpu_slots(settings.cpus_per_trial), gpus=cluster.gpus,
                                cores=cluster.cpus)

    def open_writer(self) -> RunWriter:
        create_run_dir(self.run_dir)
        return RunWriter(self.run_dir, self.study.max_epochs, self.study.config_keys(), self.settings.flush_interval_s)

    def tuner(self, session: RaySession, writer: RunWriter, fusion: Fusion | None, pruning, echo):
        try:
            return make_tuner(self.study, self.settings, self.splits, self.run_dir, self.storage_path,
                              session.cluster.has_gpus, writer, echo, fusion, pruning)
        except Exception as e:  # Tune creates its experiment folder here, in the run folder or the storage
            shutil.rmtree(self.run_dir, ignore_errors=True)  # made a moment ago by this command, nothing in it yet
            if self.settings.storage is None:
                raise
            raise UserError(f"cannot use --storage {self.settings.storage}: {str(e).splitlines()[0]}") from None

    def record(self, session: RaySession, decision, echo) -> RunRecord:
        storage = self.tune_dir if self.settings.storage else None  # None: <run folder>/tune
        return RunRecord.started(self.study.record(), asdict(self.settings), self.splits.record(), session.facts(),
                                 storage, decision.record())


def run(settings: SearchSettings, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Validate, run the study on Ray, write the run folder; returns the trials table.

    Raises `Interrupted` after Ctrl-C or SIGTERM, with the run folder resumable."""
    return lifecycle.live(NewRun.make(settings), echo)
