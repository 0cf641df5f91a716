"""Shared test set-up: never download, headless plots, real MNIST loaded once per session."""
import os

os.environ.setdefault("ALPHAREG_NO_DOWNLOAD", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from alphareg.data import load_mnist, paper_data  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
    """The full real MNIST as uint8 arrays (from the offline package or a local folder)."""
    return load_mnist()


@pytest.fixture(scope="session")
def paper_split():
    """(train, test, info) of the paper's data in float64 on the CPU."""
    return paper_data(100, 0, torch.float64, "cpu")
