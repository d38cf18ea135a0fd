"""Shared fixtures: the real Fashion-MNIST files, tiny IDX writers, one Ray per session."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tunefm.engine import data
from tunefm.run import store
from tunefm.run.writer import RunWriter

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


def pytest_collection_modifyitems(config, items):
    """Every test that needs the README's quick search (minutes) is in the slow tier."""
    for item in items:
        if "quick_fourfam" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    """A calibration cache of the session's own (before Ray starts, so its workers inherit it):
    tests never read or change the user's ~/.cache/tunefm."""
    os.environ["TUNEFM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tunefm-cache-")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real files: $TUNEFM_DATA_DIR, else ../shared/data/fashion-mnist, else the cache.

    Tests never download: without the files they fail and say where to put them.
    """
    candidates = [Path(os.environ["TUNEFM_DATA_DIR"])] if os.environ.get("TUNEFM_DATA_DIR") else [
        DEFAULT_DATA, Path("~/.cache/tunefm/fashion-mnist").expanduser()]
    for folder in candidates:
        if all(data.find_file(folder, stem) for stem in data.FILES.values()):
            return folder.resolve()  # absolute: tests link to these files from other folders
    pytest.fail(f"Fashion-MNIST IDX files not found in {', '.join(map(str, candidates))}: "
                f"set TUNEFM_DATA_DIR to a folder holding them")


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, count: int | None = None,
              compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file; magic/count may be forged to make bad files."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    count = count if count is not None else len(array)
    header = struct.pack(">II", magic, count) + (struct.pack(">II", *array.shape[1:]) if array.ndim == 3 else b"")
    payload = header + array.tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture
def copy_of_data(tmp_path, data_dir) -> Path:
    """A private copy of the real files, safe to damage."""
    target = tmp_path / "fmnist"
    shutil.copytree(data_dir, target)
    return target


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one takes seconds)."""
    import ray

    # Fixed resources (no GPU even where one exists), so resource tests mean the same everywhere.
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


QUICK_FOURFAM = dict(space="fourfam", max_epochs=3, train_size=3000, val_size=1000)  # the README's quick search


@pytest.fixture(scope="session")
def quick_fourfam(tmp_path_factory, data_dir, ray_session) -> Path:
    """The README's quick search (all 112 fourfam trials, 3 epochs, ASHA, test evaluation).

    Shared by the search, summarize, evaluate and report tests; they must not change it
    (copy it with `linked_copy` first).
    """
    from tunefm.tune.search import run
    from tunefm.tune.settings import SearchSettings

    results = tmp_path_factory.mktemp("quick")
    settings = SearchSettings(**QUICK_FOURFAM, results_dir=str(results), data_dir=str(data_dir), name="quick")
    return run(settings, echo=lambda line: None).run_dir


@pytest.fixture(scope="session")
def small_fourfam(tmp_path_factory, data_dir) -> Path:
    """fourfam on every model x 2 lr x 2 batch sizes, 3 epochs, trained without Ray in seconds
    (small_runs.py): the run the fast tier's summarize, report and evaluate tests read. They
    must not change it (copy it with `linked_copy` first)."""
    from small_runs import small_fourfam as build

    return build(tmp_path_factory.mktemp("small") / "small", data_dir)


def linked_copy(run_dir: Path, target: Path) -> Path:
    """A copy of a run folder made of hard links: cheap, and safe because tunefm replaces
    files by renaming new ones into place instead of writing into them."""
    shutil.copytree(run_dir, target, copy_function=os.link)
    return target


def tiny_run(run_dir: Path, started_at: str = "2026-01-01T00:00:00+00:00", finished: bool = True) -> Path:
    """A run folder written through RunWriter by hand, without Ray: two trials of iaro1
    (one with 2 epochs, one with 1), no test evaluation; `finished=False` leaves it running."""
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir, max_epochs=3, config_keys=["model", "lr", "batch_size"])
    for epoch, (tl, vl, va) in enumerate([(1.0, 0.9, 0.6), (0.7, 0.8, 0.7)], 1):
        writer.add_epoch("a", {"model": "iaro1", "lr": 0.01, "batch_size": 8},
                         {"epoch": epoch, "train_loss": tl, "val_loss": vl, "val_acc": va, "train_acc": 0.5,
                          "epoch_time_s": 1.0, "train_time_s": 0.9, "time_total_s": epoch, "params": 21352,
                          "gpu_fraction": 0.0})
    writer.add_epoch("b", {"model": "iaro1", "lr": 0.1, "batch_size": 8},
                     {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_acc": 0.3, "train_acc": 0.2,
                      "epoch_time_s": 1.0, "train_time_s": 0.9, "time_total_s": 1.0, "params": 21352,
                      "gpu_fraction": 0.0})
    writer.set_status("a", {}, "TERMINATED" if finished else "RUNNING")
    writer.flush()
    store.write_json({"study": {"name": "tiny"}, "status": "completed" if finished else "running",
                      "started_at": started_at}, run_dir / store.RUN_FILE)
    return run_dir
