"""A run folder: its layout, writing files atomically, reading its tables back, and finding runs.

    results/<run>/
      trials.parquet/    one row per trial (status, config columns, summary metrics): bucket-NNNNN.parquet parts
      epochs.parquet/    one row per (trial_id, epoch), config columns included: part-NNNNNN.parquet parts
      parts.json         the manifest: which parts make up the latest flush
      confusion.parquet  trial_id, true_label, pred_label, count (test-evaluated trials)
      run.json           study, options, versions, data checksums, times, host
      tune/              Ray Tune's experiment folder (checkpoints)

`writer.RunWriter` writes the two tables as the search runs, at a cost per flush
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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunefm.errors import UserError
from tunefm.run import partfiles
from tunefm.run.columns import EPOCH_METRICS, INT_COLUMNS, TEXT_COLUMNS
from tunefm.run.trial_summary import summary_dtypes

TRIALS, EPOCHS = "trials", "epochs"  # the run's tables: folders of part files (partfiles.py)
TRIALS_FILE, EPOCHS_FILE, RUN_FILE = "trials.parquet", "epochs.parquet", "run.json"
CONFUSION_FILE = "confusion.parquet"
TUNE_DIR = "tune"  # Ray Tune's experiment folder: checkpoints (unless --storage puts them elsewhere)
TENSORBOARD_DIR = "tensorboard"  # one TensorBoard event folder per trial
GENERATION_KEY = b"tunefm.generation"  # Parquet metadata: which flush wrote the file


def column_type(name: str) -> pa.DataType:
    """The Parquet type of a column of the trials or epochs table that is not a config key."""
    if name in INT_COLUMNS:
        return pa.int64()
    if name in TEXT_COLUMNS:
        return pa.string()
    return pa.bool_() if name == "stopped_early" else pa.float64()


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
