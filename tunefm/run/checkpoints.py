"""A trial's checkpoints in the run folder (or under --storage): their files, the one listing
of them, and which of them a run's policy keeps.

    <tune>/<trial_id>/<folder>/state.pt    model, optimizer, epoch, RNG states (engine.training)
                              /meta.json   {"epoch": 3, "val_acc": 0.91, "state_bytes": 90210}:
                                           found without torch; a state.pt of that size is whole

Tune names the folders and decides when one is written; a checkpoint folder is known here
by its own files, not by Tune's folder names. Read through pyarrow's file systems, so
`--storage s3://...` is listed the same way. No torch: `state.pt` stays bytes here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

import pyarrow.fs as pafs

from tunefm.errors import UserError

STATE_FILE, META_FILE = "state.pt", "meta.json"
POLICIES = ("best", "all")  # --keep-checkpoints
KEEP_TOP = 5  # configurations per model whose best checkpoint outlives the search under "best"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder: its epoch (None where meta.json is missing or unreadable) and bytes."""

    folder: str
    epoch: int | None
    size: int
    has_state: bool
    complete: bool = False  # its epoch is known and its state.pt whole (the size meta.json records, where it does)


def files(state: bytes, epoch: int, val_acc: float) -> dict[str, bytes]:
    """A checkpoint's files: the state's bytes, and the meta that lets it be found cheaply."""
    meta = {"epoch": epoch, "val_acc": val_acc, "state_bytes": len(state)}
    return {STATE_FILE: state, META_FILE: json.dumps(meta).encode()}


def write(folder: str | os.PathLike, contents: dict[str, bytes]) -> None:
    """Write a checkpoint's files into a local folder (Tune then persists the folder)."""
    for name, blob in contents.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(blob)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def state_path(folder: str) -> str:
    return f"{folder}/{STATE_FILE}"


def listing(fs: pafs.FileSystem, trial_dir: str) -> list[Checkpoint]:
    """Every checkpoint folder of one trial, in name order (Tune's names sort by index): one
    listing of the trial's folder (one request on S3), then one small read per meta.json."""
    selector = pafs.FileSelector(trial_dir, allow_not_found=True, recursive=True)
    root = trial_dir.rstrip("/")
    folders: dict[str, dict] = {}
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root) + 1:]
        if relative.count("/") != 1:
            continue  # the trial's own files, or deeper
        top, name = relative.split("/")
        entry = folders.setdefault(f"{root}/{top}", {"size": 0, "meta": None, "state": False, "state_size": None})
        entry["size"] += info.size or 0
        entry["meta"] = info.path if name == META_FILE else entry["meta"]
        if name == STATE_FILE:
            entry["state"], entry["state_size"] = True, info.size
    found = []
    for folder, entry in sorted(folders.items()):
        if entry["meta"] is None and not entry["state"]:
            continue  # not a checkpoint
        epoch, whole_size = None, None
        if entry["meta"] is not None:
            try:
                meta = json.loads(read_bytes(fs, entry["meta"]))
                epoch, whole_size = int(meta["epoch"]), meta.get("state_bytes")
            except (OSError, ValueError, KeyError):
                epoch = None
        complete = epoch is not None and entry["state"] and whole_size in (None, entry["state_size"])
        found.append(Checkpoint(folder, epoch, entry["size"], entry["state"], complete))
    return found


def newer_state(tune_dir: str | None, trial_id: str, than_epoch: int,
                recorded: Mapping[str, int] | None) -> bytes | None:
    """The state of the trial's newest complete checkpoint in `<tune_dir>/<trial_id>` (a path or
    URI) with an epoch after `than_epoch` (0: none) and at most `recorded[trial_id]`, the last
    epoch the run recorded for it; None where it has none, or nothing was recorded (a new search).

    Why a resumed trial needs it: on Ctrl-C, Tune saves its experiment state and only then
    stops the trials, still taking in the results that arrive meanwhile. The Parquet writer
    records such an epoch and its checkpoint is on disk, but the saved state names the one
    before (or none), so Tune would restore the trial from there and train that epoch again.
    Bounded by the last epoch the run recorded: a checkpoint whose result never reached
    the driver is not used, so no epoch goes missing from the tables either."""
    up_to_epoch = (recorded or {}).get(trial_id)
    if not up_to_epoch or not tune_dir:
        return None
    trial_dir = f"{tune_dir}/{trial_id}"
    try:
        fs, path = pafs.FileSystem.from_uri(trial_dir) if "://" in trial_dir else (pafs.LocalFileSystem(), trial_dir)
        found = [c for c in listing(fs, path) if c.complete and than_epoch < c.epoch <= up_to_epoch]
        return read_bytes(fs, state_path(max(found, key=lambda c: c.epoch).folder)) if found else None
    except OSError:  # a folder this node cannot reach: the checkpoint Tune gives stands
        return None


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise UserError(f"--keep-checkpoints must be {' or '.join(POLICIES)}, got {policy!r}")


def gone_message(trial_id: str, kept: dict) -> str | None:
    """The error for a trial whose checkpoint the run's policy deleted (None if it did not);
    `kept` is run.json's "checkpoints"."""
    if kept.get("policy") != "best" or "kept_trials" not in kept or trial_id in kept["kept_trials"]:
        return None
    top = kept.get("keep_top", KEEP_TOP)
    return (f"trial {trial_id}'s checkpoints were deleted after the search: --keep-checkpoints best keeps only "
            f"each model's top {top} configuration(s); evaluate with --test-top {top} or less, or run the search "
            f"with --keep-checkpoints all")
