"""Folders of Parquet part files under one manifest: how a run's tables are written and read back.

    parts = PartFiles(run_dir)                  # an empty set, or PartFiles.open(run_dir) for the last commit
    parts.put("epochs", "part-000001.parquet", table, level=0)    # a new or replaced part
    parts.remove("epochs", "part-000000.parquet")
    parts.commit()                              # one atomic manifest names the whole new state
    tables = read_snapshot(run_dir)             # {"trials": pa.Table, "epochs": pa.Table}, one commit's

A table `name` is the folder `<run>/<name>.parquet/`, so `pandas.read_parquet`, Polars and
DuckDB read it as one dataset. Every part is written under a temporary name and renamed
into place, so each part a reader opens is whole. `parts.json` names every part of the
latest commit with the commit (generation) that wrote it, and each part carries its
generation in its Parquet metadata: `read_snapshot` reads the parts the manifest names and
starts again when one is missing or newer, so it always returns one commit's state, never
trials from one flush with epochs from another. A part dropped from the set is deleted
right after the manifest that no longer names it.

Pure pyarrow; never imports Ray.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "parts.json"
GENERATION_KEY = b"tunefm.generation"  # Parquet metadata: the commit that wrote the part
SNAPSHOT_TRIES = 200  # a writer commits every few seconds; a retry is needed only when a read straddles one


class StaleSnapshot(Exception):
    """A part named by the manifest was replaced or removed while it was being read."""


class DamagedPart(Exception):
    """A part that is there but is not a Parquet file (a disk error, a hand edit)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def folder(root: Path, table: str) -> Path:
    return Path(root) / f"{table}.parquet"


def write_part(path: Path, table: pa.Table, generation: int) -> None:
    """Write `table` to `path` through a temporary name, stamped with `generation`."""
    metadata = {**(table.schema.metadata or {}), GENERATION_KEY: str(generation).encode()}
    table = table.replace_schema_metadata(metadata)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_part(path: Path) -> tuple[pa.Table, int | None]:
    """(table, generation) of one part, through one open handle (a part replaced between
    a stat and an open would otherwise be read with the old size)."""
    with open(path, "rb") as f:
        content = f.read()
    try:
        table = pq.read_table(io.BytesIO(content))
    except Exception as e:  # pyarrow raises several types for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedPart(path, reason.split("<Buffer>': ", 1)[-1]) from None  # the buffer is our detail
    stamp = (table.schema.metadata or {}).get(GENERATION_KEY)
    return table, int(stamp) if stamp else None


class PartFiles:
    """The part files of a run's tables and the manifest that commits them."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.generation = 0
        # table -> part name -> {"generation": commit that wrote it, "rows": n, **the writer's own keys}
        self.parts: dict[str, dict[str, dict]] = {}
        self._removed: list[Path] = []

    @classmethod
    def open(cls, root: Path) -> "PartFiles":
        """The set as the last commit left it (an empty one where nothing was committed)."""
        parts = cls(root)
        manifest = read_manifest(root)
        if manifest is not None:
            parts.generation = manifest["generation"]
            parts.parts = manifest["tables"]
        return parts

    def put(self, table: str, name: str, data: pa.Table, **info) -> None:
        """Write part `name` of `table` (replacing one of that name); visible to readers of
        the folder at once, to `read_snapshot` after `commit`."""
        path = folder(self.root, table) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_part(path, data, self.generation + 1)
        self._removed = [p for p in self._removed if p != path]  # removed, then written again: kept
        self.parts.setdefault(table, {})[name] = {"generation": self.generation + 1, "rows": data.num_rows, **info}

    def remove(self, table: str, name: str) -> None:
        """Drop part `name`; its file goes once a commit no longer names it."""
        if self.parts.get(table, {}).pop(name, None) is not None:
            self._removed.append(folder(self.root, table) / name)

    def names(self, table: str) -> dict[str, dict]:
        return self.parts.get(table, {})

    def commit(self) -> None:
        self.generation += 1
        manifest = {"generation": self.generation, "tables": self.parts}
        tmp = self.root / f".{MANIFEST}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(manifest, separators=(",", ":")))
        os.replace(tmp, self.root / MANIFEST)
        for path in self._removed:
            path.unlink(missing_ok=True)
        self._removed = []


def read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        return None


def has_manifest(root: Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def read_snapshot(root: Path, tables: tuple[str, ...] | None = None) -> dict[str, pa.Table]:
    """Every part of `tables` (default: all) as of one commit, each table's parts
    concatenated in name order (schemas unified: a column a part lacks is null there)."""
    for _ in range(SNAPSHOT_TRIES):
        manifest = read_manifest(root)
        if manifest is None:
            raise FileNotFoundError(Path(root) / MANIFEST)
        try:
            return {table: _read_table(root, table, manifest["tables"].get(table, {}))
                    for table in (tables if tables is not None else manifest["tables"])}
        except (FileNotFoundError, StaleSnapshot):
            time.sleep(0.01)  # the writer is committing: read its new state
    raise StaleSnapshot(f"{root} changed on every one of {SNAPSHOT_TRIES} reads")


def _read_table(root: Path, table: str, parts: dict[str, dict]) -> pa.Table:
    read = []
    for name in sorted(parts):
        data, stamp = read_part(folder(root, table) / name)
        if stamp != parts[name]["generation"]:
            raise StaleSnapshot(name)
        read.append(data.replace_schema_metadata(None))
    if not read:
        return pa.table({})
    return pa.concat_tables(read, promote_options="permissive")
