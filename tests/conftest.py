"""Shared fixtures: the real Fashion-MNIST files, tiny IDX writers, one Ray per session."""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from local_cluster import descendants, fresh_ray_env, group_alive

from tunefm.engine import data
from tunefm.run import store
from tunefm.run.writer import RunWriter

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


QUICK_FOURFAM = ["--space", "fourfam", "--max-epochs", "3", "--train-size", "3000",
                 "--val-size", "1000"]  # the README's quick search, word for word
SESSION_ENV = "TUNEFM_TEST_SESSION_DIR"  # the whole session's folder, shared by its xdist workers


def is_worker(config) -> bool:
    """A pytest-xdist worker (the controller, or a run without workers, makes the shared folder)."""
    return hasattr(config, "workerinput")


def session_dir() -> Path:
    return Path(os.environ[SESSION_ENV])


def pytest_configure(config):
    """One folder for the whole session, however many workers run it (`-n`): its calibration
    cache (tests never read or change the user's ~/.cache/tunefm; shared, so a shape is measured
    once per session as on a user's machine) and the README's quick search. Made before the
    workers and Ray start, so they inherit it through the environment."""
    if not is_worker(config):
        folder = Path(tempfile.mkdtemp(prefix="tunefm-tests-"))
        os.environ[SESSION_ENV] = str(folder)
        os.environ["TUNEFM_CACHE_DIR"] = str(folder / "cache")


# The modules that hold the suite's longest tests (minutes of both cores between them), longest
# first: started first, while the short ones fill the other worker, none is left running alone
# at the end.
LONGEST_FIRST = ("test_autoscaling.py", "test_cluster.py", "test_resume.py", "test_studies_run.py",
                 "test_fused_search.py", "test_multi_objective.py", "test_gpu_path.py", "test_search.py",
                 "test_bundle.py", "test_failures.py")
# Modules whose tests read one costly module fixture (a search, a benchmark): they stay on one
# worker, so it runs once. Every other test goes to whichever worker is free.
SHARED_FIXTURE_MODULES = ("test_search.py", "test_fused_search.py", "test_multi_objective.py", "test_bench.py")


def pytest_collection_modifyitems(config, items):
    """Every test that needs the README's quick search (minutes) is in the slow tier, and runs
    after the modules with the longest tests, when the search (started at collection) has
    finished (`run_order`). One reader of `small_fourfam` goes first of all: the
    worker that takes it builds the run while the other starts on the long tests, instead of
    waiting for it later."""
    for item in items:
        if needs_quick_search(item):
            item.add_marker(pytest.mark.slow)
    first_reader = next((item for item in items if "small_fourfam" in getattr(item, "fixturenames", ())), None)
    items.sort(key=lambda item: -1 if item is first_reader else run_order(item))  # stable: else the file's order


def run_order(item) -> int:
    """The modules with the longest tests, then the quick search's readers (it has finished by
    then; the longest reader first), then the rest: the many short tests fill the other worker
    while the last long ones run, so neither waits idle at the end."""
    if needs_quick_search(item):
        return len(LONGEST_FIRST)
    return LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST) + 1


def pytest_xdist_make_scheduler(config, log):
    """With workers (`-n`): tests in `run_order`, each to whichever worker is free, but for
    SHARED_FIXTURE_MODULES, whose tests go to one worker together."""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1] in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixturesTogether(config, log)


def needs_quick_search(item) -> bool:
    return "quick_fourfam" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session):
    """Start the README's quick search now, in the background, when a selected test needs it.
    It is the suite's largest piece of training (about 4 minutes of one core): started first,
    it is done before the tests that read it, which run last. Every worker collects the same
    tests; the first to get here starts it."""
    folder = find_data_dir()
    if folder and any(needs_quick_search(item) for item in session.items):
        QuickSearch.start_once(folder)


def pytest_unconfigure(config):
    """The session ends (after every worker): the quick search, if still running, is stopped as
    Ctrl-C would stop it, and the session's folder goes."""
    if not is_worker(config) and SESSION_ENV in os.environ:
        QuickSearch.stop()
        shutil.rmtree(session_dir(), ignore_errors=True)


def own_processes() -> set[int]:
    """This test process's descendants (the session's Ray, the searches tests run), less the
    background quick search and its Ray: what a test may look for and kill among."""
    mine = descendants(os.getpid()) - {os.getpid()}
    if (pid := QuickSearch.pid()) is not None:
        mine -= descendants(pid)
    return mine


class QuickSearch:
    """`tunefm search` with the README's quick-search options, as a user runs it, in its own
    process group with its own local Ray, once per session whatever the number of workers:
    one starts it (`start_once`), any waits for it (`wait`: its run folder), the session's
    end stops it. Its exit code lands in a file, so a worker that did not start it can wait
    for it."""

    @staticmethod
    def folder() -> Path:
        return session_dir() / "quick"

    @classmethod
    def start_once(cls, data_folder: Path) -> None:
        folder = cls.folder()
        try:
            folder.mkdir()  # atomic: the one worker that makes it starts the search
        except FileExistsError:
            return
        env = {**fresh_ray_env(folder), "TUNEFM_DATA_DIR": str(data_folder)}
        search = [sys.executable, "-c", "from tunefm.cli import main; main()", "search", *QUICK_FOURFAM,
                  "--results", str(folder / "results"), "--name", "quick"]
        with open(folder / "output.txt", "w") as log:
            process = subprocess.Popen(
                ["sh", "-c", '"$@"; echo $? > "$0.tmp" && mv "$0.tmp" "$0"', str(folder / "exit_code"), *search],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (folder / "pid").write_text(str(process.pid))

    @classmethod
    def pid(cls) -> int | None:
        """The search's process group (its shell's pid), if it was started in this session."""
        try:
            return int((cls.folder() / "pid").read_text())
        except (FileNotFoundError, ValueError, KeyError):
            return None

    @classmethod
    def wait(cls, data_folder: Path, timeout_s: float = 1800) -> Path:
        cls.start_once(data_folder)  # asked for by getfixturevalue: not seen at collection
        folder = cls.folder()
        deadline = time.monotonic() + timeout_s
        while not (folder / "exit_code").exists():
            if time.monotonic() > deadline:
                pytest.fail(f"the README's quick search did not finish in {timeout_s:.0f} s")
            time.sleep(1)
        code = int((folder / "exit_code").read_text())
        if code != 0:
            output = (folder / "output.txt").read_text()
            pytest.fail(f"the README's quick search exited with {code}:\n{output[-3000:]}")
        return folder / "results" / "quick"

    @classmethod
    def stop(cls) -> None:
        pid = cls.pid()
        if pid is None or (cls.folder() / "exit_code").exists():
            return
        try:
            os.killpg(pid, signal.SIGINT)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and group_alive(pid):
                time.sleep(0.5)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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
        with gzip.open(path, "wb", compresslevel=1) as f:  # fast; any level reads the same
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
    return QuickSearch.wait(data_dir)


@pytest.fixture(scope="session")
def small_fourfam(data_dir) -> Path:
    """fourfam on every model x 2 lr x 2 batch sizes, 3 epochs, trained without Ray in seconds
    (small_runs.py): the run the fast tier's summarize, report and evaluate tests read. They
    must not change it (copy it with `linked_copy` first). Built once per session: the first
    worker to ask builds it, the others wait for it (a file lock)."""
    from small_runs import small_fourfam as build

    folder = session_dir() / "small"
    folder.mkdir(exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "small" / store.RUN_FILE).exists():
            shutil.rmtree(folder / "small", ignore_errors=True)  # a build that died half-way
            build(folder / "small", data_dir)
    return folder / "small"


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
