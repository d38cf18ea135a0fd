"""Layout of a run folder and reading a run back; per-trial summaries of epoch rows.

    results/<run>/
      trials.parquet/    one row per trial (status, config columns, summary metrics): bucket-NNNNN.parquet parts
      epochs.parquet/    one row per (trial_id, epoch), config columns included: part-NNNNNN.parquet parts
      parts.json         the manifest: which parts make up the latest flush
      confusion.parquet  trial_id, true_label, pred_label, count (test-evaluated trials)
      run.json           study, options, versions, data checksums, times, host
      tune/              Ray Tune's experiment folder (checkpoints)

`run_writer.RunWriter` writes the two tables as the search runs, at a cost per flush
that does not grow with the study; `partfiles.py` says how a reader gets one flush's
state. `pandas.read_parquet(run / "epochs.parquet")` (or Polars, or DuckDB's
`read_parquet('run/epochs.parquet/*.parquet')`) reads a folder as one table; `load_run`
reads both tables as of one flush, while the search writes. Runs written before part
files (`trials.parquet` and `epochs.parquet` as single files) are read as they are.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunefm import partfiles
from tunefm.errors import UserError

TRIALS, EPOCHS = "trials", "epochs"  # the run's tables: folders of part files (partfiles.py)
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


INT_COLUMNS = {"epochs", "retries", "epoch", "best_epoch", "min_train_loss_epoch", "params", "threads", "group_size"}
TEXT_COLUMNS = {"trial_id", "status", "device", "node_id", "node_ip", "gpu_ids", "execution", "fused_group"}


def column_type(name: str) -> pa.DataType:
    """The Parquet type of a column of the trials or epochs table that is not a config key."""
    if name in INT_COLUMNS:
        return pa.int64()
    if name in TEXT_COLUMNS:
        return pa.string()
    return pa.bool_() if name == "stopped_early" else pa.float64()


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
    """The trials table (one row per trial, by trial_id), in either layout."""
    return read_tables(run_dir, (TRIALS,))[TRIALS]


def read_epochs(run_dir: Path) -> pd.DataFrame:
    """The epochs table (one row per trial and epoch, by trial_id and epoch), in either layout."""
    return read_tables(run_dir, (EPOCHS,))[EPOCHS]


def has_results(run_dir: Path) -> bool:
    """The run has committed its first flush (or is a run of the one-file layout)."""
    trials = Path(run_dir) / TRIALS_FILE
    return trials.is_file() or (trials.is_dir() and partfiles.has_manifest(run_dir))


def read_tables(run_dir: Path, tables: tuple[str, ...] = (TRIALS, EPOCHS)) -> dict[str, pd.DataFrame]:
    """`tables` as of one flush, as DataFrames in a stable order (an absent table is empty).

    A run folder with a manifest is read through it (`partfiles.read_snapshot`); one
    written before part files has one file per table, each stamped with the flush that
    wrote it, and they are read again until the stamps agree.
    """
    run_dir = Path(run_dir)
    if partfiles.has_manifest(run_dir):
        try:
            snapshot = partfiles.read_snapshot(run_dir, tables)
        except partfiles.DamagedPart as e:
            raise UserError(f"cannot read {e.path}: {e.reason}") from None
        read = {name: table.to_pandas() for name, table in snapshot.items()}
    elif (run_dir / TRIALS_FILE).is_dir():
        read = {}  # the first flush is being written
    else:
        read = _read_legacy(run_dir, tables)
    out = {}
    for name in tables:
        frame = read.get(name)
        if frame is None or not len(frame.columns):
            frame = pd.DataFrame(columns=["trial_id", "epoch", *EPOCH_METRICS] if name == EPOCHS else ["trial_id"])
        keys = ["trial_id", "epoch"] if name == EPOCHS else ["trial_id"]
        if len(frame) and set(keys) <= set(frame.columns):
            frame = frame.sort_values(keys, kind="stable", ignore_index=True)
        out[name] = summary_dtypes(frame) if name == TRIALS and "best_epoch" in frame.columns else frame
    return out


def _read_legacy(run_dir: Path, tables: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    paths = {TRIALS: run_dir / TRIALS_FILE, EPOCHS: run_dir / EPOCHS_FILE}
    read = {name: _read_table(paths[name]) for name in tables if paths[name].exists()}
    for _ in range(SNAPSHOT_TRIES):
        stamps = {name: stamp for name, (_, stamp) in read.items()}
        if None in stamps.values() or len(set(stamps.values())) <= 1:
            break
        # The writer renamed epochs into place first, trials a moment later: read both again.
        time.sleep(0.01)
        read = {name: _read_table(paths[name]) for name in read}
    return {name: frame for name, (frame, _) in read.items()}


def write_trials(run_dir: Path, trials: pd.DataFrame) -> None:
    """Replace the trials table (the test evaluation's columns), as one commit."""
    run_dir = Path(run_dir)
    if not partfiles.has_manifest(run_dir):
        write_parquet(trials, run_dir / TRIALS_FILE, generation(run_dir / EPOCHS_FILE))
        return
    from tunefm.run_writer import TRIALS_PER_BUCKET, conform

    parts = partfiles.PartFiles.open(run_dir)
    table = pa.Table.from_pandas(trials, preserve_index=False)
    known = {*TRIAL_STATE, *SUMMARY_COLUMNS}  # the writer's types for these, so every bucket has one schema
    schema = pa.schema([(f.name, column_type(f.name) if f.name in known else f.type) for f in table.schema])
    table = conform(table, schema)
    for name in list(parts.names(TRIALS)):
        parts.remove(TRIALS, name)
    for bucket, start in enumerate(range(0, max(table.num_rows, 1), TRIALS_PER_BUCKET)):
        name = f"bucket-{bucket:05d}.parquet"
        parts.put(TRIALS, name, table.slice(start, TRIALS_PER_BUCKET))
    parts.commit()


def is_run(folder: Path) -> bool:
    return (folder / RUN_FILE).is_file() or (folder / TRIALS_FILE).exists()


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


def _reason(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_table(path: Path) -> tuple[pd.DataFrame, str | None]:
    try:
        return read_stamped(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read {path}: {_reason(e)}") from None


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

    Works while the search is still writing: trials and epochs come from one flush
    (`read_tables`).
    """
    run_dir = Path(run_dir)
    if not has_results(run_dir):
        raise UserError(f"run {run_dir} has no results yet ({TRIALS_FILE} is missing); "
                        f"a search writes it after its first epochs")
    try:
        tables = read_tables(run_dir)
    except UserError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read {run_dir}: {_reason(e)}") from None
    trials, epochs = tables[TRIALS], tables[EPOCHS]
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
