"""Readers for dataset files under the data root (npz, csv, MNIST idx, CIFAR-10 pickles).

numpy only, no torch: the host check (``optim_engine.spec.host``) reads file datasets with these
readers at submission, and the engine builds tensors from the same arrays, so a file that passes
the check is a file that trains.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# The layouts torchvision writes, so a data root prepared with torchvision works unchanged.
VISION_FILES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "mnist": (
        "MNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ),
    "fashion_mnist": (
        "FashionMNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ),
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
    ),
}


class DataFileError(ValueError):
    """A dataset file is missing, outside the data root, or unreadable.

    ``param`` names the dataset param the problem is about (``path``, ``x_key``, ``target``, ...).
    """

    def __init__(self, message: str, param: str = "path") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ArrayData:
    """Features as a 2-D float32 array, targets as int64 labels or 2-D float32 values."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def resolve_data_path(relative: str, root: Path) -> Path:
    """Resolve ``relative`` under ``root``; reject escapes and missing files with a clear message."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise DataFileError(f"path {relative!r} escapes the data root {str(root)!r}")
    if not candidate.exists():
        raise DataFileError(f"no file {relative!r} under the data root {str(root)!r}")
    return candidate


def _stamp(path: Path) -> tuple[str, float, int]:
    stat = path.stat()
    return (str(path), stat.st_mtime, stat.st_size)


@lru_cache(maxsize=16)
def _load_npz_cached(stamp: tuple[str, float, int], x_key: str, y_key: str) -> ArrayData:
    path = Path(stamp[0])
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (x_key, y_key) if k not in archive.files]
            if missing:
                message = f"{path.name} has no array {missing[0]!r} (arrays: {archive.files})"
                raise DataFileError(message, param="x_key" if missing[0] == x_key else "y_key")
            x, y = archive[x_key], archive[y_key]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"cannot read {path.name} as npz: {exc}") from exc
    return ArrayData(x=np.asarray(x), y=np.asarray(y))


def load_npz(path: Path, x_key: str, y_key: str) -> ArrayData:
    """Load two arrays from an ``.npz`` file (cached by path, mtime and size)."""
    return _load_npz_cached(_stamp(path), x_key, y_key)


@lru_cache(maxsize=16)
def _load_csv_cached(stamp: tuple[str, float, int], target: str | int, delimiter: str, header: bool) -> ArrayData:
    path = Path(stamp[0])
    try:
        table = np.genfromtxt(path, delimiter=delimiter, skip_header=1 if header else 0, dtype=np.float64, ndmin=2)
        names: list[str] = []
        if header:
            with path.open(encoding="utf-8") as handle:
                names = [n.strip() for n in handle.readline().rstrip("\n").split(delimiter)]
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read {path.name} as csv: {exc}") from exc
    if table.size == 0:
        raise DataFileError(f"{path.name} has no rows")
    if np.isnan(table).any():
        raise DataFileError(f"{path.name} has empty or non-numeric cells")
    if isinstance(target, str):
        if target not in names:
            raise DataFileError(f"{path.name} has no column {target!r} (columns: {names})", param="target")
        column = names.index(target)
    else:
        column = target if target >= 0 else table.shape[1] + target
        if not 0 <= column < table.shape[1]:
            raise DataFileError(f"{path.name} has {table.shape[1]} columns; no column {target}", param="target")
    x = np.delete(table, column, axis=1)
    return ArrayData(x=x, y=table[:, column])


def load_csv(path: Path, target: str | int, delimiter: str, header: bool) -> ArrayData:
    """Load a numeric csv: every column but ``target`` is a feature."""
    return _load_csv_cached(_stamp(path), target, delimiter, header)


def vision_paths(name: str, root: Path) -> list[Path]:
    """The files a vision dataset needs, each as plain or ``.gz``; raise if any is missing."""
    folder, train, test = VISION_FILES[name]
    found = []
    for file in (*train, *test):
        plain = root / folder / file
        candidates = [plain, plain.with_name(plain.name + ".gz")]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise DataFileError(f"{name} needs {folder}/{file} under the data root {str(root)!r}")
        found.append(hit)
    return found


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFileError(f"{path.name} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataFileError(f"{path.name} is truncated")
    return data.reshape(shape)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as handle:
        # CIFAR-10's own distribution format is a pickle; the file lies under the operator's data root.
        batch = pickle.load(handle, encoding="latin1")  # noqa: S301
    return np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch["labels"], dtype=np.int64)


@lru_cache(maxsize=4)
def load_vision(name: str, root: Path) -> ArrayData:
    """Load a vision dataset's official train and test splits as flat float32 pixels in [0, 1]."""
    paths = vision_paths(name, root)
    if name == "cifar10":
        parts = [_read_cifar_batch(p) for p in paths]
        x_train = np.concatenate([x for x, _ in parts[:5]])
        y_train = np.concatenate([y for _, y in parts[:5]])
        x_test, y_test = parts[5]
    else:
        x_train, y_train, x_test, y_test = (_read_idx(p) for p in paths)

    def flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0

    return ArrayData(x=flat(x_train), y=y_train.astype(np.int64), x_test=flat(x_test), y_test=y_test.astype(np.int64))
