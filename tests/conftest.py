"""Shared fixtures: the real Fashion-MNIST files, tiny IDX writers, one Ray per session."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from local_cluster import descendants, fresh_ray_env

from tunefm.engine import data
from tunefm.run import store
from tunefm.run.writer import RunWriter

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


QUICK_FOURFAM = ["--space", "fourfam", "--max-epochs", "3", "--train-size", "3000",
                 "--val-size", "1000"]  # the README's quick search, word for word
background_search: "QuickSearch | None" = None  # started by pytest_collection_finish


def pytest_collection_modifyitems(config, items):
    """Every test that needs the README's quick search (minutes) is in the slow tier."""
    for item in items:
        if "quick_fourfam" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    """A calibration cache of the session's own (before Ray starts, so its workers inherit it):
    tests never read or change the user's ~/.cache/tunefm."""
    os.environ["TUNEFM_CACHE_DIR"] = tempfile.mkdtemp(prefix="tunefm-cache-")


def pytest_collection_finish(session):
    """Start the README's quick search now, in the background, when a selected test needs it.

    It is the suite's largest piece of training (2-3 minutes of both cores), while the
    machine is idle for about two thirds of the suite (tests waiting on Ray and process
    start-ups). At a low CPU priority it trains in that idle time, barely slowing the
    tests in front, and is done long before the first test that reads it (test files run
    in name order; the first reader is test_importance.py, minutes later)."""
    global background_search
    folder = find_data_dir()
    if folder and any("quick_fourfam" in getattr(item, "fixturenames", ()) for item in session.items):
        background_search = QuickSearch(folder)


def pytest_unconfigure(config):
    if background_search is not None:
        background_search.stop()


def own_processes() -> set[int]:
    """This test process's descendants (the session's Ray, the searches tests run), less the
    background quick search and its Ray: what a test may look for and kill among."""
    mine = descendants(os.getpid()) - {os.getpid()}
    if background_search is not None:
        mine -= descendants(background_search.process.pid)
    return mine


class QuickSearch:
    """`tunefm search` with the README's quick-search options, as a user runs it, in its own
    process group with its own local Ray; `wait()` returns its run folder. Niceness 10, which
    its Ray inherits: about a tenth of the CPU while the tests in front want all of it, enough
    that no Ray worker waits past Ray's start-up timeouts."""

    def __init__(self, data_folder: Path):
        self.folder = Path(tempfile.mkdtemp(prefix="tunefm-quick-"))
        self.run_dir = self.folder / "results" / "quick"
        env = {**fresh_ray_env(self.folder), "TUNEFM_DATA_DIR": str(data_folder)}
        self.log = open(self.folder / "output.txt", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tunefm.cli import main; main()", "search", *QUICK_FOURFAM,
             "--results", str(self.folder / "results"), "--name", "quick"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=lambda: os.nice(10))  # mostly idle time: the tests in front keep the CPU

    def wait(self) -> Path:
        code = self.process.wait(timeout=1800)
        output = (self.folder / "output.txt").read_text()
        if code != 0:
            pytest.fail(f"the README's quick search exited with {code}:\n{output[-3000:]}")
        return self.run_dir

    def stop(self) -> None:
        """The session ends: a search still running is stopped as Ctrl-C would (its Ray with it)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def find_data_dir() -> Path | None:
    """The real files: $TUNEFM_DATA_DIR, else ../shared/data/fashion-mnist, else the cache."""
    for folder in data_candidates():
        if all(data.find_file(folder, stem) for stem in data.FILES.values()):
            return folder.resolve()  # absolute: tests link to these files from other folders
    return None


def data_candidates() -> list[Path]:
    if os.environ.get("TUNEFM_DATA_DIR"):
        return [Path(os.environ["TUNEFM_DATA_DIR"])]
    return [DEFAULT_DATA, Path("~/.cache/tunefm/fashion-mnist").expanduser()]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real files (`find_data_dir`). Tests never download: without the files they fail
    and say where to put them."""
    folder = find_data_dir()
    if folder is None:
        pytest.fail(f"Fashion-MNIST IDX files not found in {', '.join(map(str, data_candidates()))}: "
                    f"set TUNEFM_DATA_DIR to a folder holding them")
    return folder


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


def start_session_ray():
    """The session's Ray: always a new local one (`address="local"`), whatever RAY_ADDRESS or
    the record of a `ray start` cluster (ray_current_cluster, left behind by a dead one too)
    say; a bare ray.init() would join those, or refuse num_cpus for them. Fixed resources (no
    GPU even where one exists), so resource tests mean the same everywhere."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting one takes seconds)."""
    ray = start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def quick_fourfam(data_dir) -> Path:
    """The README's quick search (all 112 fourfam trials, 3 epochs, ASHA, test evaluation),
    started in the background when the session began (`pytest_collection_finish`).

    Shared by the search, importance, resume and retention tests; they must not change it
    (copy it with `linked_copy` first).
    """
    global background_search
    if background_search is None:  # asked for by getfixturevalue: not seen at collection
        background_search = QuickSearch(data_dir)
    return background_search.wait()


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
