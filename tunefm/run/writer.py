"""The driver's Parquet writer: every reported epoch and trial state into a run folder, at a cost
that does not grow with the study.

    writer = RunWriter(run_dir, max_epochs=100, config_keys=["model", "lr", "batch_size"])
    writer.add_epoch(trial_id, config, result)      # a trial reported an epoch
    writer.set_status(trial_id, config, "TERMINATED")
    writer.flush()                                  # every few seconds, at each trial end
    writer.compact()                                # at the end of the search: one epochs part

What one flush writes (see `partfiles.py` for how a reader gets one flush's state):
  - `epochs.parquet/part-NNNNNN.parquet`: the epoch rows reported since the last flush, as
    a new part. Sixteen parts of one level are merged into one of the next, so a run has a
    few dozen parts at most and each row is rewritten a few times in all (log16 of the
    rows), not once per flush. `compact()` merges them all, sorted by (trial_id, epoch).
  - `trials.parquet/bucket-NNNNN.parquet`: one row per trial, 256 trials per bucket in the
    order the trials were first seen; only buckets holding a changed trial are rewritten.
  - `parts.json`: the manifest.

An epoch that arrives again (a retried or resumed trial) replaces the old row instead of
duplicating it, and a trial that went back to an older checkpoint drops its rows after
it: the parts holding those rows are rewritten without them, in the same flush, so
(trial_id, epoch) stays unique. Every part of a table has the same schema (a column's
type is fixed by the first value seen; a config value of a new type, such as a float in
an integer column, rewrites every part once), so a reader of the folder sees one table.

The writer keeps the epoch history of unfinished trials only (their summaries change);
a finished trial keeps its summary row. A resumed search's writer starts from the
files already there (`load`), the old one-file layout included, which its first
flush rewrites as folders.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tunefm.errors import UserError
from tunefm.run import partfiles, store, trial_summary
from tunefm.run.columns import EPOCH_METRICS, INTERRUPTED, SUMMARY_COLUMNS, TRIAL_FACTS, TRIAL_STATE
from tunefm.run.record import live_search_pid
from tunefm.run.store import EPOCHS, EPOCHS_FILE, TRIALS, TRIALS_FILE, column_type

TRIALS_PER_BUCKET = 256  # a changed trial rewrites its bucket: ~3 ms at this size
COMPACT_FANOUT = 16  # parts of one level merged into one part of the next
FINISHED = ("TERMINATED",)  # a trial in this state reports no more epochs: its history can go


def value_type(value: Any) -> pa.DataType:
    """The Parquet type of a config value (text for anything that is not a number or a string)."""
    if isinstance(value, (bool, np.bool_)):
        return pa.bool_()
    if isinstance(value, (int, np.integer)):
        return pa.int64()
    if isinstance(value, (float, np.floating)):
        return pa.float64()
    return pa.string()


def widened(old: pa.DataType, new: pa.DataType) -> pa.DataType:
    """One type for a column that has held values of types `old` and `new`."""
    if old == new or pa.types.is_null(new):
        return old
    if pa.types.is_null(old):
        return new
    if {old, new} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def _null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types (a missing column all null)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name]
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class RunWriter:
    """Collects reported epochs and trial states; each flush writes what changed as parts."""

    def __init__(self, run_dir, max_epochs: int, config_keys: list[str] = (), flush_interval_s: float = 5.0):
        self.run_dir = Path(run_dir)
        self.max_epochs = max_epochs
        self.flush_interval_s = flush_interval_s
        self._parts = partfiles.PartFiles(self.run_dir)
        self._config_keys: list[str] = list(config_keys)  # column order; unseen keys are appended
        self._config_types: dict[str, pa.DataType] = {k: pa.null() for k in self._config_keys}
        self._trials: dict[str, dict[str, Any]] = {}  # trial id -> status, retries, config, facts
        self._bucket_of: dict[str, int] = {}  # trial id -> its bucket (the order trials were first seen)
        self._bucket_trials: dict[int, list[str]] = {}
        self._histories: dict[str, dict[int, dict]] = {}  # unfinished trials: epoch -> row
        self._summaries: dict[str, dict[str, Any]] = {}  # trial id -> its trials row, until it changes
        self._changed: set[str] = set()
        self._pending: dict[tuple[str, int], dict] = {}  # epoch rows since the last flush
        self._cut: dict[str, int] = {}  # trial id -> the first epoch whose rows on disk must go
        self._disk_latest: dict[str, int] = {}  # trial id -> its highest epoch in a part
        self._trial_parts: dict[str, set[str]] = {}  # trial id -> epoch parts holding its rows
        self._part_trials: dict[str, set[str]] = {}
        self._next_part = 0
        self._rewrite_all = False  # a column's type changed: every part again
        self._legacy = False  # started from the one-file layout
        self._dirty = False
        self._last_flush = time.monotonic()

    # -- state ---------------------------------------------------------------------------

    def _trial(self, trial_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        if trial_id not in self._trials:
            self._trials[trial_id] = {"trial_id": trial_id, "status": "PENDING", "retries": 0, "config": {}}
            bucket = len(self._bucket_of) // TRIALS_PER_BUCKET
            self._bucket_of[trial_id] = bucket
            self._bucket_trials.setdefault(bucket, []).append(trial_id)
        record = self._trials[trial_id]
        self._changed.add(trial_id)
        if config:  # Tune's config is the authority; one read back from Parquet may lack types
            record["config"] = dict(config)
            self._note_types(config)
        return record

    def _note_types(self, config: Mapping[str, Any]) -> None:
        for key, value in config.items():
            if key not in self._config_types:
                self._config_keys.append(key)
                self._config_types[key] = pa.null()
                self._rewrite_all = bool(self._parts.names(EPOCHS) or self._parts.names(TRIALS))
            if _null(value):
                continue
            old = self._config_types[key]
            new = widened(old, value_type(value))
            if new != old:
                self._config_types[key] = new
                self._rewrite_all = bool(self._parts.names(EPOCHS) or self._parts.names(TRIALS))

    def knows(self, trial_id: str) -> bool:
        return trial_id in self._trials

    def set_status(self, trial_id: str, config: Mapping[str, Any], status: str,
                   stopped_at_rung: int | None = None) -> None:
        """The trial's new status; `stopped_at_rung`: the rung where the stopping rule ended it."""
        record = self._trial(trial_id, config)
        record["status"] = status
        if stopped_at_rung is not None:
            record["stopped_at_rung"] = int(stopped_at_rung)
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

    def best_epoch(self, trial_id: str) -> int | None:
        """The first epoch at the trial's best val_acc so far (None before it has one)."""
        if trial_id not in self._histories:  # finished: its summary has it
            return self._summaries.get(trial_id, {}).get("best_epoch")
        measured = [(row["val_acc"], -epoch) for epoch, row in self._histories[trial_id].items()
                    if not _null(row.get("val_acc"))]
        return -max(measured)[1] if measured else None

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
        history = self._history(trial_id)
        # A trial restored from an older checkpoint trains those epochs again: its later rows are stale.
        for stale in [e for e in history if e > epoch]:
            del history[stale]
            self._pending.pop((trial_id, stale), None)
        if epoch <= self._disk_latest.get(trial_id, 0):
            self._cut[trial_id] = min(self._cut.get(trial_id, epoch), epoch)
        row = {"trial_id": trial_id, "epoch": epoch, **{k: result.get(k) for k in EPOCH_METRICS}}
        history[epoch] = row
        self._pending[(trial_id, epoch)] = row
        self._dirty = True

    def _history(self, trial_id: str) -> dict[int, dict]:
        """The trial's epoch rows (read back from its parts for a finished trial that reports again)."""
        if trial_id not in self._histories:
            rows = {}
            for part in sorted(self._trial_parts.get(trial_id, ())):
                table = partfiles.read_part(partfiles.folder(self.run_dir, EPOCHS) / part)[0]
                for row in table.filter(pa.compute.equal(table["trial_id"], trial_id)).to_pylist():
                    rows[int(row["epoch"])] = {"trial_id": trial_id, "epoch": int(row["epoch"]),
                                               **{k: row.get(k) for k in EPOCH_METRICS}}
            self._histories[trial_id] = rows
        return self._histories[trial_id]

    # -- schemas and rows ----------------------------------------------------------------

    def trials_schema(self) -> pa.Schema:
        names = [*TRIAL_STATE, *self._config_keys, *SUMMARY_COLUMNS]
        return pa.schema([(n, self._config_types[n] if n in self._config_types else column_type(n)) for n in names])

    def epochs_schema(self) -> pa.Schema:
        names = ["trial_id", "epoch", *EPOCH_METRICS, *self._config_keys]
        return pa.schema([(n, self._config_types[n] if n in self._config_types else column_type(n)) for n in names])

    def _cells(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row` with config values as their column's type (text for a column widened to it)."""
        for key in self._config_keys:
            value = row.get(key)
            if value is not None and self._config_types[key] == pa.string() and not isinstance(value, str):
                row[key] = str(value)
        return row

    def _summary(self, trial_id: str) -> dict[str, Any]:
        if trial_id in self._changed or trial_id not in self._summaries:
            record = self._trials[trial_id]
            trial = {"trial_id": trial_id, "status": record["status"], "retries": record["retries"],
                     "stopped_at_rung": record.get("stopped_at_rung"),
                     **record["config"], **{k: record.get(k) for k in TRIAL_FACTS}}
            history = [row for _, row in sorted(self._history(trial_id).items())]
            row = trial_summary.summary_row(trial, history, list(record["config"]), self.max_epochs)
            self._summaries[trial_id] = {k: None if _null(v) else v for k, v in row.items()}
            if record["status"] in FINISHED:
                self._histories.pop(trial_id, None)
        return self._summaries[trial_id]

    def _epoch_rows(self, rows: list[dict]) -> pa.Table:
        keys = self._config_keys
        full = [self._cells({**row, **{k: self._trials[row["trial_id"]]["config"].get(k) for k in keys}})
                for row in rows]
        return pa.Table.from_pylist(full, schema=self.epochs_schema())

    # -- writing -------------------------------------------------------------------------

    def maybe_flush(self) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write what changed since the last flush as parts, then commit them."""
        if self._legacy:
            self._leave_legacy_layout()
        if self._rewrite_all:
            self._rewrite_parts(set(self._parts.names(EPOCHS)))
        elif self._cut:
            self._rewrite_parts({p for t in self._cut for p in self._trial_parts.get(t, ())})
        self._cut = {}
        if self._pending:
            rows = [row for _, row in sorted(self._pending.items())]
            self._write_epoch_part(self._epoch_rows(rows), level=0)
            self._pending = {}
            self._merge_full_levels()
        buckets = set(self._bucket_trials) if self._rewrite_all else {self._bucket_of[t] for t in self._changed}
        schema = self.trials_schema()
        for bucket in sorted(buckets):
            rows = [self._cells(self._summary(t)) for t in self._bucket_trials[bucket]]  # a column may have widened
            self._parts.put(TRIALS, f"bucket-{bucket:05d}.parquet", pa.Table.from_pylist(rows, schema=schema))
        self._changed.clear()
        self._rewrite_all = False
        self._parts.commit()
        self._last_flush = time.monotonic()
        self._dirty = False

    def _write_epoch_part(self, table: pa.Table, level: int) -> str:
        name = f"part-{self._next_part:06d}.parquet"
        self._next_part += 1
        trials = set(table["trial_id"].to_pylist())
        self._parts.put(EPOCHS, name, table, level=level)
        self._part_trials[name] = trials
        for trial_id, latest in _latest_epochs(table).items():
            self._trial_parts.setdefault(trial_id, set()).add(name)
            self._disk_latest[trial_id] = max(self._disk_latest.get(trial_id, 0), latest)
        return name

    def _drop_part(self, name: str) -> None:
        self._parts.remove(EPOCHS, name)
        for trial_id in self._part_trials.pop(name, ()):
            self._trial_parts.get(trial_id, set()).discard(name)

    def _read_epoch_part(self, name: str) -> pa.Table:
        return partfiles.read_part(partfiles.folder(self.run_dir, EPOCHS) / name)[0]

    def _rewrite_parts(self, names: set[str]) -> None:
        """Each of `names` again, without the rows of `_cut` and in the current schema."""
        schema = self.epochs_schema()
        cut = self._cut
        for name in sorted(names):
            level = self._parts.names(EPOCHS)[name].get("level", 0)
            table = self._read_epoch_part(name)
            if cut:
                ids, epochs = table["trial_id"].to_pylist(), table["epoch"].to_pylist()
                keep = [not (t in cut and e >= cut[t]) for t, e in zip(ids, epochs)]
                table = table.filter(pa.array(keep, pa.bool_()))
            self._drop_part(name)
            if table.num_rows:
                self._write_epoch_part(conform(table, schema), level)
        for trial_id, first in cut.items():  # what is left on disk of the trial ends before `first`
            self._disk_latest[trial_id] = first - 1

    def _merge(self, names: list[str], level: int, sort: bool = False) -> None:
        table = pa.concat_tables([self._read_epoch_part(n) for n in names], promote_options="permissive")
        if sort:
            table = table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
        for name in names:
            self._drop_part(name)
        self._write_epoch_part(conform(table, self.epochs_schema()), level)

    def _merge_full_levels(self) -> None:
        level = 0
        while True:
            same = sorted(n for n, info in self._parts.names(EPOCHS).items() if info.get("level", 0) == level)
            if len(same) < COMPACT_FANOUT:
                return
            self._merge(same, level + 1)
            level += 1

    def compact(self) -> None:
        """Flush, then merge every epochs part into one, sorted by (trial_id, epoch)."""
        self.flush()
        parts = self._parts.names(EPOCHS)
        if len(parts) > 1:
            top = max(info.get("level", 0) for info in parts.values())
            self._merge(sorted(parts), top + 1, sort=True)
            self._parts.commit()

    # -- starting from a run folder -------------------------------------------------------

    def load(self) -> None:
        """Start from the run folder's files (a resumed search): every trial, its state,
        config and facts, and where its epoch rows are."""
        if partfiles.has_manifest(self.run_dir):
            self._load_parts()
        elif (self.run_dir / TRIALS_FILE).is_file():
            self._load_legacy()

    def _adopt_trials(self, trials: pa.Table) -> None:
        keys = [f.name for f in trials.schema if f.name not in (*TRIAL_STATE, *SUMMARY_COLUMNS)]
        for key in keys:
            if key not in self._config_types:
                self._config_keys.append(key)
                self._config_types[key] = pa.null()
            self._config_types[key] = widened(self._config_types[key], trials.schema.field(key).type)
        for row in trials.to_pylist():
            config = {k: row[k] for k in keys if not _null(row[k])}
            record = self._trial(row["trial_id"], {})
            record.update(config=config, status=row["status"], retries=int(row.get("retries") or 0),
                          **{k: row[k] for k in ("stopped_at_rung", *TRIAL_FACTS) if not _null(row.get(k))})
            self._summaries[row["trial_id"]] = {k: None if _null(v) else v for k, v in row.items()}

    def _load_parts(self) -> None:
        self._parts = partfiles.PartFiles.open(self.run_dir)
        self._adopt_trials(partfiles.read_snapshot(self.run_dir, (TRIALS,))[TRIALS])
        unfinished = {t for t, r in self._trials.items() if r["status"] not in FINISHED}
        for name in sorted(self._parts.names(EPOCHS)):
            table = self._read_epoch_part(name)
            self._part_trials[name] = set(table["trial_id"].to_pylist())
            for trial_id, latest in _latest_epochs(table).items():
                self._trial_parts.setdefault(trial_id, set()).add(name)
                self._disk_latest[trial_id] = max(self._disk_latest.get(trial_id, 0), latest)
            self._next_part = max(self._next_part, int(name.split("-")[1].split(".")[0]) + 1)
            for row in table.select(["trial_id", "epoch", *EPOCH_METRICS]).to_pylist():
                if row["trial_id"] in unfinished:
                    self._histories.setdefault(row["trial_id"], {})[int(row["epoch"])] = row
        self._changed.clear()  # their rows are the ones on disk

    def _load_legacy(self) -> None:
        """The one-file layout of runs written before part files: all of it is written again."""
        self._adopt_trials(pq.read_table(self.run_dir / TRIALS_FILE))
        if (self.run_dir / EPOCHS_FILE).is_file():
            for row in pq.read_table(self.run_dir / EPOCHS_FILE).to_pylist():
                trial_id, epoch = row["trial_id"], int(row["epoch"])
                kept = {"trial_id": trial_id, "epoch": epoch, **{k: row.get(k) for k in EPOCH_METRICS}}
                self._history(trial_id)[epoch] = kept
                self._pending[(trial_id, epoch)] = kept
        self._changed = set(self._trials)
        self._legacy = self._dirty = True

    def _leave_legacy_layout(self) -> None:
        for name in (TRIALS_FILE, EPOCHS_FILE):
            path = self.run_dir / name
            if path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        self._rewrite_all = True
        self._legacy = False


def _latest_epochs(table: pa.Table) -> dict[str, int]:
    """trial id -> its highest epoch in `table`."""
    latest: dict[str, int] = {}
    for trial_id, epoch in zip(table["trial_id"].to_pylist(), table["epoch"].to_pylist()):
        if epoch > latest.get(trial_id, 0):
            latest[trial_id] = epoch
    return latest


def compact_run(run_dir) -> tuple[int, int]:
    """`tunefm compact`: merge a run's epoch parts into one, sorted (a search does this when it
    ends; a killed one leaves its parts). Refuses a run whose search is still writing.
    Returns (parts before, parts after)."""
    run_dir = Path(run_dir)
    info = store.read_run_info(run_dir) if (run_dir / store.RUN_FILE).exists() else {}
    pid = live_search_pid(info)
    if pid is not None:
        raise UserError(f"run {run_dir} is still running (process {pid}); its search compacts the parts "
                        f"itself when it ends")
    if not partfiles.has_manifest(run_dir):
        raise UserError(f"run {run_dir} has no part files to compact (a run of the one-file layout, or "
                        f"no results yet)")
    before = len(partfiles.PartFiles.open(run_dir).names(EPOCHS))
    writer = RunWriter(run_dir, max_epochs=int(info.get("study", {}).get("max_epochs") or 1))
    writer.load()
    writer.compact()
    return before, len(writer._parts.names(EPOCHS))


def write_trials(run_dir: Path, trials: pd.DataFrame) -> None:
    """Replace the trials table (the test evaluation's columns), as one commit."""
    run_dir = Path(run_dir)
    if not partfiles.has_manifest(run_dir):
        store.write_parquet(trials, run_dir / TRIALS_FILE, store.generation(run_dir / EPOCHS_FILE))
        return
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
