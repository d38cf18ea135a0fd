"""Fashion-MNIST loading: locating, verifying, splitting, and every bad-file error."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx

from tunefm.engine import data
from tunefm.errors import UserError


def test_loads_real_files_with_requested_sizes(data_dir):
    splits = data.load(data_dir, train_size=3000, val_size=1000, test_size=500)
    assert splits.sizes() == {"train": 3000, "val": 1000, "test": 500}
    assert splits.train_x.shape == (3000, 28, 28) and splits.train_x.dtype == np.uint8
    assert set(np.unique(splits.train_y)) == set(range(10))
    expected = dict(line.split()[::-1] for line in (data_dir / "SHA256SUMS").read_text().splitlines())
    assert splits.checksums == expected


def test_default_split_is_50k_10k_10k(data_dir):
    splits = data.load(data_dir)
    assert splits.sizes() == {"train": 50_000, "val": 10_000, "test": 10_000}


def test_split_is_fixed_disjoint_and_nested():
    train, val = data.split_indices(None, None)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 60_000
    small_train, small_val = data.split_indices(3000, None)
    assert (small_val == val).all() and (small_train == train[:3000]).all()
    again, _ = data.split_indices(3000, None)
    assert (again == small_train).all()


def test_env_var_is_used_when_no_folder_given(data_dir, monkeypatch):
    monkeypatch.setenv("TUNEFM_DATA_DIR", str(data_dir))
    assert data.load(None, train_size=10, val_size=10).source == str(data_dir.resolve())


def test_reads_uncompressed_files(copy_of_data):
    for path in copy_of_data.glob("*.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    splits = data.load(copy_of_data, train_size=100, val_size=100)
    assert splits.sizes()["train"] == 100


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        data.load(tmp_path / "nope")


@pytest.mark.parametrize("kwargs,message", [
    ({"train_size": -5}, "--train-size must be between 1 and 50000"),
    ({"train_size": 60_000}, "--train-size must be between 1 and 50000"),
    ({"val_size": 0}, "--val-size must be between 1 and 59999"),
    ({"test_size": 20_000}, "--test-size must be between 1 and 10000"),
])
def test_sizes_out_of_range(data_dir, kwargs, message):
    with pytest.raises(UserError, match=message):
        data.load(data_dir, **kwargs)


def test_wrong_magic(copy_of_data):
    write_idx(copy_of_data / "t10k-labels-idx1-ubyte.gz", np.zeros(10_000), magic=2051 + 7)
    with pytest.raises(UserError, match="has magic number 2058, expected 2049"):
        data.load(copy_of_data)


def test_truncated_file(copy_of_data):
    path = copy_of_data / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-1000], compresslevel=1))  # fast: any level reads the same
    with pytest.raises(UserError, match="is truncated"):
        data.load(copy_of_data)


def test_truncated_gzip_stream(copy_of_data):
    path = copy_of_data / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot read"):
        data.load(copy_of_data)


def test_mismatched_counts(copy_of_data):
    write_idx(copy_of_data / "t10k-labels-idx1-ubyte.gz", np.zeros(9_999))
    with pytest.raises(UserError, match="holds 10000 images but its label file holds 9999 labels"):
        data.load(copy_of_data)


def test_labels_out_of_range(copy_of_data):
    labels = np.zeros(10_000)
    labels[17] = 12
    write_idx(copy_of_data / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(UserError, match="has label 12; labels must be 0..9"):
        data.load(copy_of_data)


def test_offline_download_ends_in_one_clear_error(tmp_path, monkeypatch):
    """No files and no network: a UserError naming the folder, not a traceback or a hang."""
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("TUNEFM_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEFAULT_DIR", tmp_path / "cache")
    with pytest.raises(UserError) as error:
        data.load(None)
    message = str(error.value)
    assert "\n" not in message
    assert f"Fashion-MNIST is not in {tmp_path / 'cache'} and could not be downloaded" in message
    assert "train-images-idx3-ubyte.gz" in message and "TUNEFM_DATA_DIR" in message
    assert not list((tmp_path / "cache").glob("*.gz"))


def test_download_places_the_four_files(tmp_path, monkeypatch, data_dir):
    """torchvision's download path, fed from the local copy instead of the network."""
    from torchvision.datasets import FashionMNIST

    def fake_download(self):
        raw = Path(self.raw_folder)
        raw.mkdir(parents=True, exist_ok=True)
        for path in data_dir.glob("*.gz"):
            shutil.copy(path, raw / path.name)

    monkeypatch.setattr(FashionMNIST, "download", fake_download)
    monkeypatch.setattr(FashionMNIST, "_check_exists", lambda self: True)
    monkeypatch.setattr(FashionMNIST, "_load_data", lambda self: (None, None))
    target = tmp_path / "empty"
    target.mkdir()
    splits = data.load(target, train_size=50, val_size=50)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in data_dir.glob("*.gz"))
    assert splits.sizes()["train"] == 50
