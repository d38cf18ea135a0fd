"""Shared fixtures: the real Fashion-MNIST files, tiny IDX writers, one Ray per session."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tunefm import data

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real files: $TUNEFM_DATA_DIR, else ../shared/data/fashion-mnist, else the cache.

    Tests never download: without the files they fail and say where to put them.
    """
    candidates = [Path(os.environ["TUNEFM_DATA_DIR"])] if os.environ.get("TUNEFM_DATA_DIR") else [
        DEFAULT_DATA, Path("~/.cache/tunefm/fashion-mnist").expanduser()]
    for folder in candidates:
        if all(data.find_file(folder, stem) for stem in data.FILES.values()):
            return folder
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
