"""Continue an interrupted search: the library behind `tunefm search --name RUN --resume`.

    outcome = resume.run(SearchSettings(name="fourfam-20261122-101500", results_dir="results"))
    outcome = resume.run(settings, given={"address"})   # options the user gave: checked against the run's

The run's own options come back from its run.json, and its trials from Tune's saved
experiment state (`Tuner.restore`): finished trials are not run again, trials that
were running continue from their last checkpoint (the RNG states included, so the
curve is the one an uninterrupted run would have drawn), trials not yet started
start, and failed trials are retried from their last checkpoint. The Parquet writer
starts from the files already written, so each (trial_id, epoch) row stays unique;
The stopping rule (ASHA, MO-ASHA) starts from the epochs already written; run.json's "events" gain "resumed" (and
"lost" when the previous search process died without a word).

Only where the run is placed may change: --address, --data-dir (the same files, checked
by SHA-256) and --max-failures. Any other option must equal the run's or be left out,
so a user can resume by adding --resume to the command that started the run. The run
itself goes through `lifecycle.live`, as a new search does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import pandas as pd
import pyarrow.fs as pafs
from ray import tune

from tunefm.engine import data
from tunefm.errors import UserError
from tunefm.run import checkpoints, store
from tunefm.run.record import RunRecord
from tunefm.run.writer import RunWriter
from tunefm.study import Study
from tunefm.tune import evaluate, lifecycle, placement, ray_internals, search
from tunefm.tune.lifecycle import Fusion, RaySession, SearchOutcome
from tunefm.tune.settings import SearchSettings

CHANGEABLE = ("address", "data_dir", "max_failures", "ray_logs")  # where, how robustly and how loudly it runs
LOCATORS = ("name", "results_dir")  # which run


def find_run(name: str, results_dir: str) -> Path:
    """The run folder to resume, `results_dir/name`; a clear error if there is none."""
    run_dir = Path(results_dir).expanduser() / name
    if not (run_dir / store.RUN_FILE).is_file():
        names = [d.name for d in store.list_runs(Path(results_dir).expanduser())]
        known = f"runs there: {', '.join(names)}" if names else "there are no runs there"
        raise UserError(f"no run named {name!r} to resume under {results_dir}/ ({known}); "
                        f"give the --name of an interrupted run, and --results if it is elsewhere")
    return run_dir


def check_resumable(run_dir: Path, record: RunRecord) -> None:
    """Refuse a run that is complete, or whose search is still running."""
    if record.status == "completed":
        trials = record.study.get("num_trials", "all")
        raise UserError(f"run {run_dir.name} is already complete ({trials} trials, finished "
                        f"{record.finished_at or '?'}); nothing to resume. Start a new search with another --name")
    pid = record.live_pid()
    if pid is not None:
        raise UserError(f"run {run_dir.name} is still running (process {pid}); stop it with Ctrl-C or "
                        f"`kill -INT {pid}` before resuming it")


def recorded_settings(run_dir: Path, record: RunRecord, changes: Mapping[str, Any]) -> SearchSettings:
    """The run's own SearchSettings (from run.json), with the options a resume may change."""
    known = {f.name for f in fields(SearchSettings)}
    options = {k: v for k, v in record.options.items() if k in known}
    options["sets"] = tuple(options.get("sets") or ())
    settings = SearchSettings(**options)
    for key, value in changes.items():
        if key in CHANGEABLE + LOCATORS:
            continue
        if value != getattr(settings, key):
            flag = "--" + ("set" if key == "sets" else key.replace("_", "-"))
            raise UserError(f"{flag} cannot change on --resume: run {run_dir.name} was started with "
                            f"{flag} {getattr(settings, key)!r}; leave it out (a resume may change "
                            f"only --address, --data-dir and --max-failures)")
    kept = {k: changes[k] for k in CHANGEABLE if k in changes}
    settings = replace(settings, name=run_dir.name, results_dir=str(run_dir.parent), **kept)
    settings.validate()
    return settings


def check_same_study(run_dir: Path, study, record: RunRecord) -> None:
    """The study file must still define the grid the run started with."""
    now = json.loads(json.dumps(study.record(), default=str))
    if record.study and now != record.study:
        changed = sorted(k for k in set(now) | set(record.study) if now.get(k) != record.study.get(k))
        raise UserError(f"study {study.name!r} has changed since run {run_dir.name} started "
                        f"({', '.join(changed)} differ); restore its file, or start a new search")


def restore_missing_checkpoints(tune_dir: str) -> list[str]:
    """Put back the checkpoint each unfinished trial is to continue from, where it is gone.

    Tune saves the experiment state every so often (at least 10 seconds apart, more for a
    large study), while tunefm deletes a trial's checkpoints as newer ones arrive and when
    it ends (retention.Pruning). A search killed in between leaves a state that names a
    deleted checkpoint, and Tune would fail to restore that trial every time and end it in
    ERROR. Where the trial has a newer checkpoint, it is moved to the path the state names;
    else (the trial ended and kept only its best, older one) the newest it has is copied
    there. A checkpoint holds its own epoch, optimizer and RNG states, so the trial
    continues from that epoch and trains the same curve. Returns the paths put back.
    """
    fs, _ = pafs.FileSystem.from_uri(tune_dir)
    put_back = []
    for named in ray_internals.named_checkpoints(tune_dir, unfinished_only=True):
        if fs.get_file_info(named).type != pafs.FileType.NotFound:
            continue
        kept = [c.folder for c in checkpoints.listing(fs, str(Path(named).parent))]  # in Tune's order
        newer = [path for path in kept if path > named]
        if newer:
            fs.move(newer[-1], named)
        elif kept:  # its best: copied, since the test evaluation may need it where it is
            fs.create_dir(named, recursive=True)
            pafs.copy_files(kept[-1], named, source_filesystem=fs, destination_filesystem=fs)
        else:
            continue
        put_back.append(named)
    return put_back


@dataclass
class ResumedRun:
    """An interrupted run, checked and ready to continue (`ResumedRun.make`); `lifecycle.live` runs it."""

    settings: SearchSettings
    study: Study
    splits: data.Splits
    run_dir: Path
    tune_dir: str
    earlier_record: RunRecord
    earlier: dict[str, pd.DataFrame]  # the trials and epochs tables written so far (store.read_tables)

    @classmethod
    def make(cls, settings: SearchSettings, given: Collection[str] = ()) -> "ResumedRun":
        """Run `settings.name` under `settings.results_dir`, with its own options where the
        user gave none (`given`: the names of the settings the user gave)."""
        if not settings.name:
            raise UserError("--resume needs --name RUN: the interrupted run to continue")
        run_dir = find_run(settings.name, settings.results_dir)
        record = RunRecord.load(run_dir)
        check_resumable(run_dir, record)
        ray_internals.check_resume_supported()
        settings = recorded_settings(run_dir, record, {k: getattr(settings, k) for k in given})
        study = search.build_study(settings)
        check_same_study(run_dir, study, record)
        tune_dir = record.storage or str((run_dir / store.TUNE_DIR).resolve())
        if not (tune.Tuner.can_restore(tune_dir) and ray_internals.saved_tune_state(tune_dir)):
            # Without its state file Tune would not refuse: it would start the whole study again.
            raise UserError(f"run {run_dir.name} cannot be resumed: Tune saved no experiment state in {tune_dir} "
                            f"(the search stopped in its first seconds); start a new search instead")
        splits = evaluate.load_run_data(record.to_json(), settings.data_dir)  # the same files, or one clear error
        earlier = store.read_tables(run_dir)  # empty tables where the run wrote none yet
        return cls(settings, study, splits, run_dir, tune_dir, record, earlier)

    def placement(self, session: RaySession) -> placement.Decision:
        fusion = self.earlier_record.fusion
        # A run from before fused execution trained its trials alone: they go on so.
        return placement.Decision(**fusion) if fusion else placement.Decision(False, 1, "a run from before fused "
                                                                                       "execution")

    def open_writer(self) -> RunWriter:
        writer = RunWriter(self.run_dir, self.study.max_epochs, self.study.config_keys(),
                           self.settings.flush_interval_s)
        writer.load()
        return writer

    def tuner(self, session: RaySession, writer: RunWriter, fusion: Fusion | None, pruning, echo):
        """Tune's saved experiment, restored with tunefm's trainable, callbacks and scheduler;
        the stopping rule replays the epochs written so far."""
        search.quiet_tune_output()
        restore_missing_checkpoints(self.tune_dir)
        settings, study = self.settings, self.study
        scheduler = search.make_scheduler(study, settings, self.earlier[store.EPOCHS], self.earlier[store.TRIALS])
        trainable = search.make_trainable(study, settings, self.splits, session.cluster.has_gpus, fusion,
                                          self.tune_dir, self.recorded_epochs())
        return ray_internals.restore_tuner(
            self.tune_dir, trainable,
            search.make_callbacks(study, settings, writer, self.run_dir, echo, self.earlier[store.TRIALS], fusion,
                                  pruning, stops=getattr(scheduler, "stopped_at", None)),
            scheduler, settings.max_failures)

    def recorded_epochs(self) -> dict[str, int]:
        """Each unfinished trial's last epoch in the run's tables: the newest checkpoint it may
        continue from, where Tune's saved state names an older one (`checkpoints.newer_state`)."""
        trials, epochs = self.earlier[store.TRIALS], self.earlier[store.EPOCHS]
        if trials.empty or epochs.empty:
            return {}
        unfinished = set(trials.loc[trials["status"] != "TERMINATED", "trial_id"])
        last = epochs[epochs["trial_id"].isin(unfinished)].groupby("trial_id")["epoch"].max()
        return {str(trial_id): int(epoch) for trial_id, epoch in last.items()}

    def record(self, session: RaySession, decision: placement.Decision, echo) -> RunRecord:
        trials = self.earlier[store.TRIALS]
        done = int((trials["status"] == "TERMINATED").sum()) if len(trials) else 0
        echo(f"Resuming run {self.run_dir.name}: {done} of {self.study.num_trials} trials finished before")
        return self.earlier_record.resumed(self.settings.resume_changes(), session.facts(), done)


def run(settings: SearchSettings, given: Collection[str] = (),
        echo: Callable[[str], None] = print) -> SearchOutcome:
    """Continue run `settings.name` under `settings.results_dir`. `given`: the settings the
    user gave (as options next to --resume): each must equal the run's own, unless a resume
    may change it (CHANGEABLE); every other setting comes from the run's run.json."""
    return lifecycle.live(ResumedRun.make(settings, given), echo)
