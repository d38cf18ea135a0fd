"""A run's life in one place: the Ray it runs on, and what happens from the first trial
to the last line, for a new search and a resumed one alike.

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

run.json is `run/record.py`'s `RunRecord`; during a search this module alone writes it, through
its named transitions.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import pandas as pd
import ray

from tunefm.engine import data
from tunefm.errors import Interrupted
from tunefm.run import checkpoints, store
from tunefm.run.columns import INTERRUPTED
from tunefm.run.record import RunRecord
from tunefm.run.writer import RunWriter
from tunefm.study import Study
from tunefm.tune import cluster, evaluate, interrupt, placement, retention
from tunefm.tune.settings import SearchSettings


# -- the Ray a run runs on -------------------------------------------------------------------
@dataclass
class RaySession:
    """The Ray cluster this process is connected to for one run."""

    cluster: cluster.Cluster
    dashboard: str | None
    address: str | None  # as the user gave it (--address), None for a local Ray
    ray_address: str | None = None  # the GCS address connected to (recorded in run.json)
    no_dashboard: str | None = None  # why a local Ray started without its dashboard
    gpus_per_trial: float | None = None

    def facts(self) -> dict[str, Any]:
        """What run.json records of it (`RunRecord.started`, `.resumed`)."""
        return {"dashboard_url": self.dashboard, "ray_address": self.ray_address, "nodes": len(self.cluster.nodes)}

    def announce(self, storage: str | None, echo: Callable[[str], None]) -> None:
        cluster.announce(self.cluster, self.dashboard, self.address, storage, echo, self.no_dashboard,
                         self.gpus_per_trial)


@contextlib.contextmanager
def ray_session(address: str | None, cpus_per_trial: float = 1.0, gpus_per_trial: float | None = None,
                log_to_driver: bool = False, **local_options) -> Iterator[RaySession]:
    """Join `address` (or the Ray this process already runs), or start a local Ray
    (`local_options` such as num_cpus go to it); shut down on leaving what was started here.
    `log_to_driver`: Ray's worker and raylet output in this terminal (else tunefm's lines only).

    Fails with one UserError, before anything is written, when no node can hold a trial."""
    if not address and not ray.is_initialized():
        # A local Ray would detect these; refusing now spares its start-up and logs.
        cluster.check_resources_fit(cpus_per_trial, gpus_per_trial, cluster.local_node())
    started, dashboard, no_dashboard = cluster.start_ray(address, log_to_driver=log_to_driver, **local_options)
    try:
        yield RaySession(cluster.connect(cpus_per_trial, gpus_per_trial), dashboard, address, cluster.gcs_address(),
                         no_dashboard, gpus_per_trial)
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
                      settings: "SearchSettings", max_epochs: int, trials: int | None = None,
                      shape_trials: dict | None = None) -> Iterator[Fusion | None]:
    """The coordinator of a fused search (None where trials train alone), stopped on leaving.
    `shape_trials`: a grid's trials per shape (None where a searcher draws them)."""
    if not decision.fuse:
        yield None
        return
    arrays = {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}
    running = placement.start(run_name, arrays, settings, decision, max_epochs, trials, shape_trials)
    try:
        yield Fusion(decision, running)
    finally:
        placement.stop(running)


# -- a run from start to end ------------------------------------------------------------------
@dataclass
class SearchOutcome:
    run_dir: Path
    trials: pd.DataFrame
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
    settings = plan.settings
    with ray_session(settings.address, settings.cpus_per_trial, settings.gpus_per_trial, settings.ray_logs) as session:
        decision = plan.placement(session)
        writer = plan.open_writer()
        configs = plan.study.search.configs(plan.study)
        shape_trials = placement.shape_counts(configs) if configs is not None else None
        with fused_coordinator(decision, plan.run_dir.name, plan.splits, settings, plan.study.max_epochs,
                               plan.study.num_trials, shape_trials) as fusion:
            pruning = make_pruning(settings, plan.tune_dir, plan.study)
            tuner = plan.tuner(session, writer, fusion, pruning, echo)
            session.announce(settings.storage, echo)
            echo(placement.describe(decision))
            record = plan.record(session, decision, echo)
            return Execution(plan, record, writer, pruning, echo).run(tuner)


def make_pruning(settings: "SearchSettings", tune_dir: str, study: "Study") -> "retention.Pruning":
    """The checkpoints this search deletes (retention.py). What the search's own test
    evaluation uses is always kept."""
    return retention.Pruning(tune_dir, settings.keep_checkpoints, max(checkpoints.KEEP_TOP, study.test_top or 0))


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
