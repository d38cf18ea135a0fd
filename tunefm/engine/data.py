"""Fashion-MNIST: locate, verify, parse IDX, split train / val / test.

    splits = data.load(data_dir=None, train_size=3000, val_size=1000)
    splits.train_x.shape   # (3000, 28, 28) uint8
    splits.val_y.shape     # (1000,) uint8

Files are looked for in `data_dir`, else `$TUNEFM_DATA_DIR`, else
`~/.cache/tunefm/fashion-mnist`, gzipped or not. Every file's header, counts and
size are checked. Missing files are downloaded through torchvision; without a
network that ends in a `UserError` saying where to put the files.

The validation set is cut from the 60,000 training images with a fixed seed, so the
same sizes always give the same images; the 10,000 test images are kept apart.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunefm.errors import UserError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
TRAIN_COUNT, TEST_COUNT = 60_000, 10_000
DEFAULT_VAL_SIZE = 10_000
SPLIT_SEED = 20_240_601  # fixed: the same sizes always pick the same images
DEFAULT_DIR = Path("~/.cache/tunefm/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, 28, 28) and uint8 labels (N,) for each split."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def record(self) -> dict:
        """run.json's "data": where the files were, the split sizes, each file's SHA-256."""
        return {"source": self.source, "sizes": self.sizes(), "sha256": self.checksums}


def resolve_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """The folder to read, and whether it is the default cache (which we may create)."""
    if data_dir:
        return Path(data_dir).expanduser(), False
    if os.environ.get("TUNEFM_DATA_DIR"):
        return Path(os.environ["TUNEFM_DATA_DIR"]).expanduser(), False
    return DEFAULT_DIR.expanduser(), True


def find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, magic: int, expected_count: int | None = None) -> np.ndarray:
    """Parse one IDX file (images: magic 2051, labels: magic 2049) and check it whole."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    header_len = 16 if magic == IMAGES_MAGIC else 8
    if len(raw) < header_len:
        raise UserError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header_len}-byte header")
    found_magic, count = struct.unpack(">II", raw[:8])
    if found_magic != magic:
        raise UserError(f"{path} has magic number {found_magic}, expected {magic}: not an IDX "
                        f"{'image' if magic == IMAGES_MAGIC else 'label'} file")
    shape: tuple[int, ...] = (count,)
    if magic == IMAGES_MAGIC:
        rows, cols = struct.unpack(">II", raw[8:16])
        if (rows, cols) != (28, 28):
            raise UserError(f"{path} holds {rows}x{cols} images, expected 28x28")
        shape = (count, rows, cols)
    expected_bytes = header_len + int(np.prod(shape))
    if len(raw) != expected_bytes:
        state = "truncated" if len(raw) < expected_bytes else "too long"
        raise UserError(f"{path} is {state}: {len(raw)} bytes, its header says {expected_bytes}")
    if expected_count is not None and count != expected_count:
        raise UserError(f"{path} holds {count} items, expected {expected_count}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
    if magic == LABELS_MAGIC and array.size and array.max() > 9:
        raise UserError(f"{path} has label {int(array.max())}; labels must be 0..9")
    return array


def download(folder: Path) -> None:
    """Fetch the canonical gzipped files into `folder` through torchvision."""
    from torchvision.datasets import FashionMNIST  # torchvision: only to download, once

    folder.mkdir(parents=True, exist_ok=True)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a dead network must not hang us
    try:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            FashionMNIST(tmp, train=True, download=True)
            raw = Path(tmp) / "FashionMNIST" / "raw"
            for stem in FILES.values():
                shutil.move(str(raw / (stem + ".gz")), folder / (stem + ".gz"))
    except Exception as e:  # torchvision wraps network failures in RuntimeError
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(
            f"Fashion-MNIST is not in {folder} and could not be downloaded ({reason}); "
            f"put the four IDX files ({', '.join(s + '.gz' for s in FILES.values())}) there, "
            f"or point --data-dir or TUNEFM_DATA_DIR at a folder that has them"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def locate(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> dict[str, Path]:
    """Paths of the four files, downloading them if they are missing."""
    folder, is_default = resolve_dir(data_dir)
    if not folder.is_dir() and not is_default:
        raise UserError(f"data folder {folder} does not exist; give --data-dir or TUNEFM_DATA_DIR "
                        f"a folder holding the Fashion-MNIST IDX files")
    paths = {key: find_file(folder, stem) for key, stem in FILES.items()}
    if any(p is None for p in paths.values()):
        if not allow_download:
            missing = [FILES[k] for k, p in paths.items() if p is None]
            raise UserError(f"{folder} lacks {', '.join(missing)} (plain or .gz)")
        download(folder)
        paths = {key: find_file(folder, stem) for key, stem in FILES.items()}
    return paths  # type: ignore[return-value]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_size(name: str, value: int | None, limit: int) -> None:
    if value is not None and not 0 < value <= limit:
        raise UserError(f"--{name} must be between 1 and {limit}, got {value}")


def split_indices(train_size: int | None, val_size: int | None, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the 60,000 training images: (train, val), disjoint, seeded.

    The validation set is the first `val_size` of a fixed permutation and the train
    set the next `train_size`, so a smaller train slice is always a prefix of a
    larger one for the same validation size.
    """
    val_size = DEFAULT_VAL_SIZE if val_size is None else val_size
    _check_size("val-size", val_size, TRAIN_COUNT - 1)
    room = TRAIN_COUNT - val_size
    if train_size is None:
        train_size = room
    if not 0 < train_size <= room:
        raise UserError(f"--train-size must be between 1 and {room} (60,000 training images "
                        f"minus --val-size {val_size}), got {train_size}")
    order = np.random.default_rng(seed).permutation(TRAIN_COUNT)
    return order[val_size:val_size + train_size], order[:val_size]


def load(data_dir: str | os.PathLike | None = None, train_size: int | None = None,
         val_size: int | None = None, test_size: int | None = None,
         allow_download: bool = True) -> Splits:
    """Read, verify and split Fashion-MNIST; sizes cut seeded slices for quick runs."""
    # Validate sizes before touching the disk or the network.
    train_idx, val_idx = split_indices(train_size, val_size)
    _check_size("test-size", test_size, TEST_COUNT)
    paths = locate(data_dir, allow_download)
    train_images = read_idx(paths["train_images"], IMAGES_MAGIC)
    train_labels = read_idx(paths["train_labels"], LABELS_MAGIC)
    test_images = read_idx(paths["test_images"], IMAGES_MAGIC)
    test_labels = read_idx(paths["test_labels"], LABELS_MAGIC)
    for split, images, labels, expected in [("train", train_images, train_labels, TRAIN_COUNT),
                                            ("test", test_images, test_labels, TEST_COUNT)]:
        if len(images) != len(labels):
            raise UserError(f"{paths[split + '_images'].name} holds {len(images)} images "
                            f"but its label file holds {len(labels)} labels")
        if len(images) != expected:
            raise UserError(f"expected {expected} images in the {split} files, found {len(images)}")
    test_idx = np.arange(TEST_COUNT)
    if test_size is not None and test_size < TEST_COUNT:
        test_idx = np.sort(np.random.default_rng(SPLIT_SEED).permutation(TEST_COUNT)[:test_size])
    return Splits(
        train_x=train_images[train_idx], train_y=train_labels[train_idx],
        val_x=train_images[val_idx], val_y=train_labels[val_idx],
        test_x=test_images[test_idx], test_y=test_labels[test_idx],
        source=str(paths["train_images"].parent.resolve()),
        checksums={p.name: sha256(p) for p in paths.values()},
    )
