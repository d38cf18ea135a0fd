"""A run's life in one place: its record (run.json), the Ray it runs on, and what happens
from the first trial to the last line, for a new search and a resumed one alike.

    outcome = lifecycle.live(plan, echo=print)     # plan: search.NewRun or resume.ResumedRun

What happens, in order (`live`):
  1. The plan was made before this: every option, the study, the data and the run folder
     checked, nothing written and no Ray started (search.py, resume.py).
  2. `ray_session`: join --address, or start a local Ray; check that one trial fits on
     some node. Whatever happens next, a Ray started here is shut down at the end.
  3. The plan decides how trials train (alone, or fused into stacked groups: placement.py)
     and opens the Parquet writer (a resumed run's writer starts from its files).
  4. `fused_coordinator`: the coordinator of fused groups, stopped at the end.
  5. The plan builds the Tuner (a new one, or Tune's saved experiment restored), with the
     checkpoint retention of retention.py.
  6. run.json becomes "running" (`RunRecord.started` or `.resumed`).
  7. `Execution.run`: Tuner.fit under Ctrl-C/SIGTERM handling (interrupt.py); then the
     test evaluation of the winners (evaluate.py), then the deletion of the checkpoints
     not kept; run.json records "completed", "interrupted" or "failed", and when.

`RunRecord` is the schema of run.json, changed only through its named transitions
(started, resumed, interrupted, failed, completed, evaluated); this module is the only
writer of run.json.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol

from tunefm import interrupt, store
from tunefm.columns import INTERRUPTED
from tunefm.errors import Interrupted

if TYPE_CHECKING:
    import pandas as pd

    from tunefm import data, placement, retention
    from tunefm.cluster import Cluster
    from tunefm.run_writer import RunWriter
    from tunefm.search import SearchSettings
    from tunefm.study import Study


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def event(name: str, **details) -> dict:
    """One entry of run.json's "events": what happened to the run, when, in which process."""
    return {"event": name, "at": now(), "pid": os.getpid(), "host": socket.gethostname(), **details}


def versions() -> dict[str, str]:
    import ray
    import torch

    try:
        own = metadata.version("tunefm")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {"tunefm": own, "ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version()}


# Keys written only once they have a value.
LATER_KEYS = ("failed_trials", "evaluation", "checkpoints", "error", "finished_at")


@dataclass
class RunRecord:
    """run.json: what a run is (study, options, data, versions), where it ran, and what
    happened to it (status, events). Unknown keys of an older or newer run.json are kept."""

    study: dict[str, Any] = field(default_factory=dict)  # Study.record()
    options: dict[str, Any] = field(default_factory=dict)  # the SearchSettings
    data: dict[str, Any] = field(default_factory=dict)  # source folder, split sizes, SHA-256 of each file
    versions: dict[str, str] = field(default_factory=dict)
    host: str | None = None  # of the search process, with its pid
    pid: int | None = None
    dashboard_url: str | None = None
    ray_address: str | None = None
    storage: str | None = None  # Tune's experiment folder under --storage; None: <run folder>/tune
    nodes: int | None = None
    fusion: dict[str, Any] | None = None  # placement.Decision.record()
    started_at: str | None = None
    status: str | None = None  # running | interrupted | failed | completed | completed with errors
    events: list[dict[str, Any]] = field(default_factory=list)
    failed_trials: int | None = None
    evaluation: dict[str, Any] | None = None  # evaluate.Evaluation.record()
    checkpoints: dict[str, Any] | None = None  # retention.Pruning.record()
    error: str | None = None
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- reading and writing -------------------------------------------------------------
    @classmethod
    def from_json(cls, info: Mapping[str, Any]) -> "RunRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in info.items() if k in known},
                   extra={k: v for k, v in info.items() if k not in known})

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        """A run's run.json; a damaged one is a one-line UserError."""
        return cls.from_json(store.read_run_info(run_dir))

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and not (k in LATER_KEYS and v is None)}
        return {**out, **self.extra}

    def save(self, run_dir: Path) -> None:
        """Replace run.json atomically: a reader sees the old record or the new one."""
        store.write_json(self.to_json(), Path(run_dir) / store.RUN_FILE)

    def live_pid(self) -> int | None:
        return live_search_pid({"status": self.status, "pid": self.pid, "host": self.host})

    # -- transitions ---------------------------------------------------------------------
    @classmethod
    def started(cls, study: "Study", settings: "SearchSettings", splits: "data.Splits", session: "RaySession",
                storage: str | None, decision: "placement.Decision") -> "RunRecord":
        return cls(study=study.record(), options=asdict(settings),
                   data={"source": splits.source, "sizes": splits.sizes(), "sha256": splits.checksums},
                   versions=versions(), host=socket.gethostname(), pid=os.getpid(), dashboard_url=session.dashboard,
                   ray_address=session.ray_address, storage=storage, nodes=len(session.cluster.nodes),
                   fusion=decision.record(), started_at=now(), status="running", events=[event("started")])

    def resumed(self, settings: "SearchSettings", session: "RaySession", trials_done: int) -> "RunRecord":
        """Running again in this process; a search process that died without a word is recorded as lost."""
        if self.status == "running":  # and its process is gone (resume.check_resumable)
            self.events.append({"event": "lost", "at": self.finished_at or now(),
                                "note": f"search process {self.pid} ended without recording why (killed?)"})
        self.events.append(event("resumed", trials_done=trials_done))
        self.status, self.pid, self.host = "running", os.getpid(), socket.gethostname()
        self.options = {**self.options, "address": settings.address, "data_dir": settings.data_dir,
                        "max_failures": settings.max_failures}  # what a resume may change
        self.dashboard_url, self.ray_address, self.error = session.dashboard, session.ray_address, None
        return self

    def interrupted(self, signal_name: str, trials_done: int) -> "RunRecord":
        self.status, self.finished_at = "interrupted", now()
        self.events.append(event("interrupted", signal=signal_name, trials_done=trials_done))
        return self

    def failed(self, error: BaseException) -> "RunRecord":
        self.status, self.finished_at = "failed", now()
        self.error = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.events.append(event("failed", error=self.error))
        return self

    def evaluated(self, evaluation: dict[str, Any]) -> "RunRecord":
        """The test evaluation (evaluate.Evaluation.record()), replacing any earlier one."""
        self.evaluation = evaluation
        return self

    def completed(self, failed_trials: int, checkpoints: dict[str, Any] | None) -> "RunRecord":
        self.status = "completed" if not failed_trials else "completed with errors"
        self.failed_trials, self.checkpoints, self.finished_at = failed_trials, checkpoints, now()
        self.events.append(event(self.status))
        return self


def live_search_pid(info: Mapping[str, Any]) -> int | None:
    """The process id of the search still writing this run (run.json says "running" and
    that process is alive on this host), else None: finished, interrupted or killed."""
    pid = info.get("pid")
    if info.get("status") != "running" or not pid or info.get("host") != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # the search was killed
    except PermissionError:
        pass  # alive, another user's
    return pid


# -- the Ray a run runs on -------------------------------------------------------------------
@dataclass
class RaySession:
    """The Ray cluster this process is connected to for one run."""

    cluster: "Cluster"
    dashboard: str | None
    address: str | None  # as the user gave it (--address), None for a local Ray
    ray_address: str | None = None  # the GCS address connected to (recorded in run.json)

    def announce(self, storage: str | None, echo: Callable[[str], None]) -> None:
        from tunefm import cluster

        cluster.announce(self.cluster, self.dashboard, self.address, storage, echo)


@contextlib.contextmanager
def ray_session(address: str | None, cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None,
                log_to_driver: bool = False, **local_options) -> Iterator[RaySession]:
    """Join `address` (or the Ray this process already runs), or start a local Ray
    (`local_options` such as num_cpus go to it); shut down on leaving what was started here.
    `log_to_driver`: Ray's worker and raylet output in this terminal (else tunefm's lines only).

    Fails with one UserError, before anything is written, when no node can hold a trial."""
    import ray

    from tunefm import cluster

    if not address and not ray.is_initialized():
        # A local Ray would detect these; refusing now spares its start-up and logs.
        cluster.check_resources_fit(cpus_per_trial, gpus_per_trial, cluster.local_node())
    started, dashboard = cluster.start_ray(address, log_to_driver=log_to_driver, **local_options)
    try:
        yield RaySession(cluster.connect(cpus_per_trial, gpus_per_trial), dashboard, address, cluster.gcs_address())
    finally:
        if started:
            ray.shutdown()


@dataclass
class Fusion:
    """A fused search's decision and its running coordinator (placement.py)."""

    decision: object  # placement.Decision
    running: object  # placement.Running


@contextlib.contextmanager
def fused_coordinator(decision: "placement.Decision", run_name: str, splits: "data.Splits",
                      settings: "SearchSettings", max_epochs: int, trials: int | None = None) -> Iterator[Fusion | None]:
    """The coordinator of a fused search (None where trials train alone), stopped on leaving."""
    if not decision.fuse:
        yield None
        return
    from tunefm import placement

    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    running = placement.start(run_name, arrays, settings, decision, max_epochs, trials)
    try:
        yield Fusion(decision, running)
    finally:
        placement.stop(running)


# -- a run from start to end ------------------------------------------------------------------
@dataclass
class SearchOutcome:
    run_dir: Path
    trials: "pd.DataFrame"
    fit_seconds: float = 0.0  # in Tuner.fit (the benchmarks' measure)


class RunPlan(Protocol):
    """What `live` needs from a new search (search.NewRun) or a resumed one (resume.ResumedRun)."""

    settings: "SearchSettings"
    study: "Study"
    splits: "data.Splits"
    run_dir: Path
    tune_dir: str  # Tune's experiment folder: <run>/tune, or under --storage

    def placement(self, session: RaySession) -> "placement.Decision": ...

    def open_writer(self) -> "RunWriter": ...

    def tuner(self, session: RaySession, writer: "RunWriter", fusion: Fusion | None,
              pruning: "retention.Pruning", echo: Callable[[str], None]): ...

    def record(self, session: RaySession, decision: "placement.Decision",
               echo: Callable[[str], None]) -> RunRecord: ...


def live(plan: RunPlan, echo: Callable[[str], None] = print) -> SearchOutcome:
    """Run `plan` from Ray's start to run.json's last word (the steps in this module's docstring).

    Raises `Interrupted` after Ctrl-C or SIGTERM, with the run folder resumable."""
    from tunefm import placement

    settings = plan.settings
    with ray_session(settings.address, settings.cpus_per_trial, settings.gpus_per_trial, settings.ray_logs) as session:
        decision = plan.placement(session)
        writer = plan.open_writer()
        with fused_coordinator(decision, plan.run_dir.name, plan.splits, settings, plan.study.max_epochs,
                               plan.study.num_trials) as fusion:
            pruning = make_pruning(settings, plan.tune_dir, plan.study)
            tuner = plan.tuner(session, writer, fusion, pruning, echo)
            session.announce(settings.storage, echo)
            echo(placement.describe(decision))
            record = plan.record(session, decision, echo)
            return Execution(plan, record, writer, pruning, echo).run(tuner)


def make_pruning(settings: "SearchSettings", tune_dir: str, study: "Study") -> "retention.Pruning":
    """The checkpoints this search deletes (retention.py). What the search's own test
    evaluation uses is always kept."""
    from tunefm import retention

    return retention.Pruning(tune_dir, settings.keep_checkpoints, max(retention.KEEP_TOP, study.test_top or 0))


@dataclass
class Execution:
    """One search's Tuner.fit with its writer, its graceful stop and its evaluation."""

    plan: RunPlan
    record: RunRecord
    writer: "RunWriter"
    pruning: "retention.Pruning"
    echo: Callable[[str], None]

    def run(self, tuner) -> SearchOutcome:
        """Run the Tuner (new or restored), then evaluate the winners, then delete the
        checkpoints not kept; keep run.json current.

        Ctrl-C or SIGTERM: Tune stops the trials and saves its state, the Parquet files are
        flushed with the running trials marked INTERRUPTED, run.json records the
        interruption, and `Interrupted` carries the command that resumes the run.
        """
        plan, record, echo, run_dir = self.plan, self.record, self.echo, self.plan.run_dir
        stop = interrupt.GracefulStop()
        try:
            with stop:
                record.save(run_dir)
                echo(f"Running {plan.study.num_trials} trials of study {plan.study.name!r} into {run_dir}")
                echo(f"TensorBoard: tensorboard --logdir {run_dir / store.TENSORBOARD_DIR}")
                started = time.perf_counter()
                with stop.tune_loop():
                    results = tuner.fit()
                fit_seconds = time.perf_counter() - started
                if stop.signal:  # Tune ended its loop early and saved its state
                    raise KeyboardInterrupt
                self.evaluate()
                record.completed(len(results.errors), self.prune())
                return SearchOutcome(run_dir, store.read_trials(run_dir), fit_seconds)
        except KeyboardInterrupt:
            raise self.interrupted(stop.signal or "SIGINT") from None
        except BaseException as e:
            record.failed(e)
            raise
        finally:
            record.save(run_dir)

    def evaluate(self) -> None:
        """The study's top configurations on the test set (none with test_top 0)."""
        study, splits = self.plan.study, self.plan.splits
        if study.test_top:
            from tunefm import evaluate

            evaluation = evaluate.evaluate_trials(self.plan.run_dir, splits.test_x, splits.test_y, study.test_top,
                                                  self.echo, tune_dir=self.plan.tune_dir)
            self.record.evaluated(evaluation.record())

    def prune(self) -> dict[str, Any]:
        """Delete the checkpoints the retention policy does not keep; what was kept and freed."""
        if self.pruning.policy == "best":
            self.pruning.after_search(store.read_trials(self.plan.run_dir))
            self.echo(self.pruning.describe())
        return self.pruning.record()

    def interrupted(self, signal_name: str) -> Interrupted:
        """Flush what the trials reported, record the interruption, and say how to resume."""
        self.writer.mark_interrupted()
        self.writer.flush()
        counts = self.writer.statuses()
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        paused = counts.get(INTERRUPTED, 0)
        self.record.interrupted(signal_name, done)
        total = self.plan.study.num_trials
        return Interrupted(
            f"Interrupted by {signal_name}: {done} of {total} trials finished, {paused} stopped at their last "
            f"checkpoint, {max(total - done - paused, 0)} not started; results so far are in {self.plan.run_dir}",
            resume_command(self.plan.settings, self.plan.run_dir), signal_name)


def resume_command(settings: "SearchSettings", run_dir: Path) -> str:
    """The command line that continues this run."""
    command = f"tunefm search --name {run_dir.name} --resume"
    if Path(settings.results_dir).expanduser().resolve() != Path("results").resolve():
        command += f" --results {settings.results_dir}"
    if settings.address:
        command += f" --address {settings.address}"
    return command
