"""Parquet layout of a run folder: writing rows as trials report, reading a run back.

    results/<run>/
      trials.parquet   one row per trial (status, config columns, summary metrics)
      epochs.parquet   one row per (trial_id, epoch), config columns included
      confusion.parquet  trial_id, true_label, pred_label, count (test-evaluated trials)
      run.json         study, options, versions, data checksums, times, host
      tune/            Ray Tune's experiment folder (checkpoints, TensorBoard events)

`RunWriter` keeps every row in memory (a study's epochs are a few MB at most),
rewrites both Parquet files on `flush()` under a temporary name and renames them into
place, so a reader that opens a file once (`read_parquet`) never sees a half-written
one, and a crash loses at most the rows since the last flush. Both files of one flush
carry the same generation stamp in their Parquet metadata; `load_run` reads until the
two agree, so a summary never mixes one flush's trials with another's epochs.

Rows are keyed by (trial_id, epoch): a reported epoch that arrives again (a retried or
resumed trial) replaces the old row instead of duplicating it, and a trial that went
back to an older checkpoint drops its rows after it. A resumed search's writer starts
from the files already there (`RunWriter.load`).

This module is pure pandas/pyarrow and never imports Ray.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunefm.errors import UserError

TRIALS_FILE, EPOCHS_FILE, RUN_FILE = "trials.parquet", "epochs.parquet", "run.json"
CONFUSION_FILE = "confusion.parquet"
TUNE_DIR = "tune"  # Ray Tune's experiment folder: checkpoints (unless --storage puts them elsewhere)
TENSORBOARD_DIR = "tensorboard"  # one TensorBoard event folder per trial
EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s", "train_time_s", "time_total_s"]
# Per trial, from its latest epoch: where and on what it ran (started_at: Unix time its training
# began; execution: its loop, or fused:<kernels> in a fused group; fused_group: that group's id, ""
# alone; group_size: the members the group trained that epoch).
TRIAL_FACTS = ["params", "device", "node_id", "node_ip", "gpu_fraction", "gpu_ids", "threads", "started_at",
               "execution", "fused_group", "group_size"]
TRAIN_ACC_TARGET = 0.9  # seed 004 compares trials by the time to reach 90% train accuracy
SUMMARY_COLUMNS = [
    "params", "best_val_acc", "best_epoch", "val_loss_at_best", "min_train_loss",
    "min_train_loss_epoch", "final_train_loss", "final_val_loss", "overfit_gap",
    "time_per_epoch_s", "total_time_s", "time_to_90_train_acc_s", "gpu_fraction", "gpu_ids", "node_id", "node_ip",
    "device", "threads", "started_at", "execution", "fused_group", "group_size", "test_acc", "test_loss",
]
# Numeric per-trial figures a study may compare with what its seed reported.
REPORTABLE = [c for c in SUMMARY_COLUMNS if c not in TRIAL_FACTS or c == "params"]
# status: Tune's (PENDING, RUNNING, TERMINATED, ERROR), or INTERRUPTED for a trial that
# was running when the search was stopped; retries: restarts from a checkpoint after a failure.
TRIAL_STATE = ["trial_id", "status", "stopped_early", "epochs", "retries"]
INTERRUPTED = "INTERRUPTED"
GENERATION_KEY = b"tunefm.generation"  # Parquet metadata: which flush wrote the file


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The columns of a trials table that are config keys (model, lr, batch_size, ...)."""
    known = {*TRIAL_STATE, *SUMMARY_COLUMNS, *TRIAL_FACTS}
    return [c for c in trials.columns if c not in known]


def write_atomic(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp over `path`: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(df: pd.DataFrame, path: Path, generation: str | None = None) -> None:
    """Write `df` atomically, stamped with `generation` (see `load_run`) when given."""
    def write(tmp: Path):
        table = pa.Table.from_pandas(df, preserve_index=False)
        if generation is not None:
            metadata = {**(table.schema.metadata or {}), GENERATION_KEY: generation.encode()}
            table = table.replace_schema_metadata(metadata)
        pq.write_table(table, tmp)
    write_atomic(path, write)


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    def write(tmp: Path):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    write_atomic(path, write)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def epoch_limit(config: Mapping[str, Any], max_epochs: int) -> int:
    """The epochs a trial runs if nothing stops it: the study's, or fewer by its own
    `max_epochs` config key (null in a Parquet row of a trial without one)."""
    own = config.get("max_epochs")
    return max_epochs if own is None or pd.isna(own) else min(max_epochs, int(own))


def summarize_trials(epochs: pd.DataFrame, trials: pd.DataFrame, max_epochs: int) -> pd.DataFrame:
    """One row per trial from its epoch rows (`summary_row` for each trial).

    `trials` has one row per trial: trial_id, status, the config columns and the
    trial facts (params, node_id, ...). A trial with no epoch yet keeps null metrics.
    """
    config_columns = [c for c in trials.columns if c not in ("trial_id", "status", "retries", *TRIAL_FACTS)]
    histories = ({tid: g.sort_values("epoch").to_dict("records") for tid, g in epochs.groupby("trial_id", sort=False)}
                 if len(epochs) else {})
    rows = [summary_row(trial._asdict(), histories.get(trial.trial_id, []), config_columns, max_epochs)
            for trial in trials.itertuples(index=False)]
    return summary_dtypes(pd.DataFrame(rows))


def _number(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def summary_row(trial: Mapping[str, Any], history: list[Mapping[str, Any]], config_columns: list[str],
                max_epochs: int) -> dict[str, Any]:
    """One trial's trials.parquet row, from its state and config (`trial`) and its epoch
    rows in epoch order. Plain Python: the writer calls it for every changed trial on
    every flush.

    `stopped_early` means the scheduler ended the trial before `max_epochs` (or before
    the trial's own `max_epochs` config key, where it has one). The best epoch is the
    first at the best val_acc. `time_to_90_train_acc_s` is the trial's time (Tune's
    time_total_s) at the end of the first epoch whose train accuracy reached 90%, null
    if none did.
    """
    n_epochs = len(history)
    retries = trial.get("retries")
    row = {"trial_id": trial["trial_id"], "status": trial["status"],
           "stopped_early": trial["status"] == "TERMINATED" and n_epochs < epoch_limit(trial, max_epochs),
           "epochs": n_epochs, "retries": 0 if retries is None or pd.isna(retries) else int(retries),
           **{c: trial.get(c) for c in config_columns}}
    metrics: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, math.nan)
    metrics.update({c: trial.get(c) for c in TRIAL_FACTS})
    if history:
        last = history[-1]
        metrics.update(
            final_train_loss=_number(last["train_loss"]), final_val_loss=_number(last["val_loss"]),
            overfit_gap=_number(last["val_loss"]) - _number(last["train_loss"]),
            time_per_epoch_s=_mean(_number(r["epoch_time_s"]) for r in history),
            total_time_s=max((t for t in (_number(r["time_total_s"]) for r in history) if not math.isnan(t)),
                             default=math.nan),
        )
        val_acc = [_number(r["val_acc"]) for r in history]
        measured = [i for i, v in enumerate(val_acc) if not math.isnan(v)]
        if measured:
            best_at = max(measured, key=lambda i: (val_acc[i], -i))  # the first epoch at the best value
            metrics.update(best_val_acc=val_acc[best_at], best_epoch=int(history[best_at]["epoch"]),
                           val_loss_at_best=_number(history[best_at]["val_loss"]))
        reached = next((r for r in history if _number(r["train_acc"]) >= TRAIN_ACC_TARGET), None)
        if reached is not None:
            metrics["time_to_90_train_acc_s"] = _number(reached["time_total_s"])
        train_loss = [_number(r["train_loss"]) for r in history]
        finite = [i for i, v in enumerate(train_loss) if not math.isnan(v)]  # a diverged trial has only NaN
        if finite:
            lowest = min(finite, key=lambda i: (train_loss[i], i))
            metrics.update(min_train_loss=train_loss[lowest], min_train_loss_epoch=int(history[lowest]["epoch"]))
    row.update({c: metrics[c] for c in SUMMARY_COLUMNS})
    return row


def _mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def summary_dtypes(table: pd.DataFrame) -> pd.DataFrame:
    """The trials table's column types, whatever rows (or none) it was built from."""
    if len(table):
        for column in ("best_epoch", "min_train_loss_epoch", "params", "threads", "group_size"):
            table[column] = table[column].astype("Int64")
        for column in ("test_acc", "test_loss", "gpu_fraction", "time_to_90_train_acc_s", "started_at"):
            table[column] = table[column].astype("float64")
    return table


class RunWriter:
    """Collects reported epochs and trial states; flushes both Parquet files atomically."""

    def __init__(self, run_dir: Path, max_epochs: int, config_keys: list[str] = (),
                 flush_interval_s: float = 5.0):
        self.run_dir = Path(run_dir)
        self.max_epochs = max_epochs
        self.flush_interval_s = flush_interval_s
        self._epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self._latest: dict[str, int] = {}  # trial id -> its highest epoch row
        self._trials: dict[str, dict[str, Any]] = {}
        self._config_keys: list[str] = list(config_keys)  # column order; unseen keys are appended
        self._last_flush = time.monotonic()
        self._dirty = False
        # Each trial's summary row is kept until that trial changes: a flush then costs
        # the changed trials, not the whole run (it was the search's biggest driver cost).
        self._summaries: dict[str, dict[str, Any]] = {}
        self._summarized_columns: list[str] = []  # the trials columns the cached rows were made from
        self._changed: set[str] = set()

    def load(self) -> None:
        """Start from the run folder's Parquet files (a resumed search): every trial, its
        state, config and facts, and every epoch row already written."""
        if not (self.run_dir / TRIALS_FILE).exists():
            return
        trials = read_trials(self.run_dir)
        epochs = read_epochs(self.run_dir) if (self.run_dir / EPOCHS_FILE).exists() else pd.DataFrame()
        keys = config_columns(trials)
        self._config_keys += [k for k in keys if k not in self._config_keys]
        for row in trials.to_dict("records"):
            config = {k: row[k] for k in keys if not _is_null(row[k])}
            record = self._trial(row["trial_id"], config)
            record.update(status=row["status"], retries=int(row.get("retries") or 0),
                          **{k: row[k] for k in TRIAL_FACTS if k in row and not _is_null(row[k])})
        for row in epochs.to_dict("records"):
            trial_id, epoch = row["trial_id"], int(row["epoch"])
            self._epochs[(trial_id, epoch)] = {"trial_id": trial_id, "epoch": epoch,
                                               **{k: row.get(k) for k in EPOCH_METRICS}}
            self._latest[trial_id] = max(self._latest.get(trial_id, 0), epoch)

    def _trial(self, trial_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        if trial_id not in self._trials:
            self._trials[trial_id] = {"trial_id": trial_id, "status": "PENDING", "retries": 0, "config": {}}
        record = self._trials[trial_id]
        self._changed.add(trial_id)
        if config:  # Tune's config is the authority; one read back from Parquet may lack types
            record["config"] = dict(config)
            self._config_keys += [k for k in config if k not in self._config_keys]
        return record

    def knows(self, trial_id: str) -> bool:
        return trial_id in self._trials

    def set_status(self, trial_id: str, config: Mapping[str, Any], status: str) -> None:
        self._trial(trial_id, config)["status"] = status
        self._dirty = True

    def add_retry(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """The trial failed and Tune restarts it from its last checkpoint."""
        self._trial(trial_id, config)["retries"] += 1
        self._dirty = True

    def mark_interrupted(self) -> None:
        """The search was stopped: running trials become INTERRUPTED (resumable)."""
        for trial_id, record in self._trials.items():
            if record["status"] == "RUNNING":
                record["status"] = INTERRUPTED
                self._changed.add(trial_id)
        self._dirty = True

    def statuses(self) -> dict[str, int]:
        """How many trials are in each status."""
        counts: dict[str, int] = {}
        for record in self._trials.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        return counts

    def add_epoch(self, trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Record one reported result (the trainable's metrics plus Tune's time_total_s)."""
        trial = self._trial(trial_id, config)
        if trial["status"] in ("PENDING", INTERRUPTED):
            trial["status"] = "RUNNING"
        first_start = trial.get("started_at")
        trial.update({k: result[k] for k in TRIAL_FACTS if k in result})
        if first_start is not None and "started_at" in result:  # a retry or resume: keep when training began
            trial["started_at"] = min(first_start, result["started_at"])
        epoch = int(result["epoch"])
        # A trial restored from an older checkpoint trains those epochs again: its later rows are stale.
        for stale in range(epoch + 1, self._latest.get(trial_id, 0) + 1):
            self._epochs.pop((trial_id, stale), None)
        self._latest[trial_id] = epoch
        self._epochs[(trial_id, epoch)] = {
            "trial_id": trial_id, "epoch": epoch, **{k: result.get(k) for k in EPOCH_METRICS},
        }
        self._dirty = True

    def maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(trials, epochs) as they would be written now."""
        keys = self._config_keys
        trial_rows = [
            {"trial_id": t["trial_id"], "status": t["status"], "retries": t["retries"],
             **{k: t["config"].get(k) for k in keys}, **{k: t.get(k) for k in TRIAL_FACTS}}
            for _, t in sorted(self._trials.items())
        ]
        trials = pd.DataFrame(trial_rows, columns=["trial_id", "status", "retries", *keys, *TRIAL_FACTS])
        epoch_rows = [
            {**row, **{k: self._trials[row["trial_id"]]["config"].get(k) for k in keys}}
            for _, row in sorted(self._epochs.items())
        ]
        epochs = pd.DataFrame(epoch_rows, columns=["trial_id", "epoch", *EPOCH_METRICS, *keys])
        return self._summarize(trials), epochs

    def _summarize(self, trials: pd.DataFrame) -> pd.DataFrame:
        """`summarize_trials` of this writer's epochs and `trials`, recomputing only the
        trials changed since the last call (straight from the in-memory rows)."""
        if list(trials.columns) != self._summarized_columns:  # a new config key: every row needs it
            self._summaries, self._summarized_columns = {}, list(trials.columns)
        config_columns = [c for c in trials.columns if c not in ("trial_id", "status", "retries", *TRIAL_FACTS)]
        histories: dict[str, list[dict[str, Any]]] = {}
        stale = {t for t in trials["trial_id"] if t in self._changed or t not in self._summaries}
        if stale:
            for (trial_id, _), row in self._epochs.items():
                if trial_id in stale:
                    histories.setdefault(trial_id, []).append(row)
            for history in histories.values():
                history.sort(key=lambda row: row["epoch"])
            for trial in trials[trials["trial_id"].isin(stale)].to_dict("records"):
                self._summaries[trial["trial_id"]] = summary_row(trial, histories.get(trial["trial_id"], []),
                                                                 config_columns, self.max_epochs)
        self._changed.clear()
        rows = [self._summaries[t] for t in trials["trial_id"]]
        return summary_dtypes(pd.DataFrame(rows))

    def flush(self) -> None:
        trials, epochs = self.tables()
        generation = uuid.uuid4().hex
        write_parquet(epochs, self.run_dir / EPOCHS_FILE, generation)
        write_parquet(trials, self.run_dir / TRIALS_FILE, generation)
        self._last_flush = time.monotonic()
        self._dirty = False


def _is_null(value: Any) -> bool:
    return value is None or (not isinstance(value, (list, tuple, dict, str)) and bool(pd.isna(value)))


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file that may be replaced while we read it.

    `pd.read_parquet(path)` stats the file, then opens it: if a writer renames a new
    file into place in between, it reads the new bytes with the old size and fails
    (about 1 read in 20 under a busy writer). One open handle sees one whole file.
    """
    return read_stamped(path)[0]


def read_stamped(path: Path) -> tuple[pd.DataFrame, str | None]:
    """(table, generation stamp or None) of one Parquet file, read through one open handle."""
    with open(path, "rb") as f:
        content = f.read()
    metadata = pq.read_schema(io.BytesIO(content)).metadata or {}
    stamp = metadata.get(GENERATION_KEY)
    return pd.read_parquet(io.BytesIO(content)), stamp.decode() if stamp else None


def generation(path: Path) -> str | None:
    """The generation stamp of a Parquet file (None if it has none or does not exist)."""
    try:
        stamp = (pq.read_schema(path).metadata or {}).get(GENERATION_KEY)
    except (OSError, pa.ArrowException):
        return None
    return stamp.decode() if stamp else None


def read_trials(run_dir: Path) -> pd.DataFrame:
    return read_parquet(Path(run_dir) / TRIALS_FILE)


def read_epochs(run_dir: Path) -> pd.DataFrame:
    return read_parquet(Path(run_dir) / EPOCHS_FILE)


def is_run(folder: Path) -> bool:
    return (folder / RUN_FILE).is_file() or (folder / TRIALS_FILE).is_file()


def list_runs(results_dir: Path) -> list[Path]:
    """The run folders directly under `results_dir` (none if it does not exist)."""
    return sorted(d for d in results_dir.iterdir() if d.is_dir() and is_run(d)) if results_dir.is_dir() else []


def newest_run(results_dir: Path) -> Path:
    """The run folder under `results_dir` that was started last."""
    results_dir = Path(results_dir).expanduser()
    runs = list_runs(results_dir)
    if not runs:
        raise UserError(f"no runs under {results_dir}/; start one with `tunefm search`, "
                        f"or give a run folder")
    return max(runs, key=_started_at)


def _started_at(run_dir: Path) -> float:
    """When a run started: run.json's started_at (a folder's mtime changes with every flush)."""
    try:
        return dt.datetime.fromisoformat(read_json(run_dir / RUN_FILE)["started_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return (run_dir / TRIALS_FILE).stat().st_mtime if (run_dir / TRIALS_FILE).exists() else 0.0


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


def resolve_run(run: str | None, results_dir: Path) -> Path:
    """RUN as given on the command line: a folder path, a name under `results_dir`, or the newest."""
    results_dir = Path(results_dir).expanduser()
    if run is None:
        return newest_run(results_dir)
    for candidate in (Path(run).expanduser(), results_dir / run):
        if candidate.is_dir() and is_run(candidate):
            return candidate
    names = [d.name for d in list_runs(results_dir)]
    known = f"runs under {results_dir}/: {', '.join(names)}" if names else f"no runs under {results_dir}/"
    what = "is not a run folder (no run.json or trials.parquet)" if Path(run).expanduser().is_dir() else "does not exist"
    raise UserError(f"run {run!r} {what}; {known}")


def _read_table(path: Path) -> tuple[pd.DataFrame, str | None]:
    try:
        return read_stamped(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path}: {reason}") from None


SNAPSHOT_TRIES = 20  # a writer flushes every few seconds: two reads in a row almost always agree


@dataclass
class RunTables:
    """A run folder read back: its tables (empty where a file is absent) and run.json."""

    run_dir: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    confusion: pd.DataFrame
    info: dict[str, Any]


def load_run(run_dir: Path) -> RunTables:
    """Read a run for analysis; a missing, empty or damaged run is a one-line UserError.

    Works while the search is still writing: every file is replaced atomically, so each
    read sees a whole file, and trials and epochs are read again until both come from
    the same flush (their generation stamps agree; files without stamps are taken as
    they are).
    """
    run_dir = Path(run_dir)
    if not (run_dir / TRIALS_FILE).is_file():
        raise UserError(f"run {run_dir} has no results yet ({TRIALS_FILE} is missing); "
                        f"a search writes it after its first epochs")
    trials, trials_stamp = _read_table(run_dir / TRIALS_FILE)
    if (run_dir / EPOCHS_FILE).exists():
        epochs, epochs_stamp = _read_table(run_dir / EPOCHS_FILE)
        for _ in range(SNAPSHOT_TRIES):
            if trials_stamp is None or epochs_stamp is None or trials_stamp == epochs_stamp:
                break
            # The writer renames epochs into place first, trials a moment later: read the one behind again.
            time.sleep(0.01)
            trials, trials_stamp = _read_table(run_dir / TRIALS_FILE)
            if trials_stamp != epochs_stamp:
                epochs, epochs_stamp = _read_table(run_dir / EPOCHS_FILE)
    else:
        epochs = pd.DataFrame(columns=["trial_id", "epoch", *EPOCH_METRICS])
    if trials.empty or "trial_id" not in trials.columns:
        raise UserError(f"run {run_dir} has no trials in {TRIALS_FILE}")
    confusion = _read_table(run_dir / CONFUSION_FILE)[0] if (run_dir / CONFUSION_FILE).exists() else pd.DataFrame(
        columns=["trial_id", "true_label", "pred_label", "count"])
    info = read_run_info(run_dir) if (run_dir / RUN_FILE).exists() else {}
    return RunTables(run_dir, trials, epochs, confusion, info)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """A run's run.json; a damaged one is a one-line UserError."""
    try:
        return read_json(Path(run_dir) / RUN_FILE)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {Path(run_dir) / RUN_FILE}: {e}") from None
