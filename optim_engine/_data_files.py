"""Readers for dataset files under the data root (npz, csv, MNIST idx, CIFAR-10 pickles).

numpy only, no torch. At submission the host check (``optim_engine.spec.host``) *inspects* a
file dataset without loading it: an .npz's arrays by their .npy headers inside the zip, sizes
checked before anything is inflated; a csv streamed a chunk of rows at a time. Only the
targets' range is read in full, a chunk at a time, so memory stays bounded whatever the file.
The worker *loads* the arrays with the same parsers, so a file that passes the check trains.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

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
    """A dataset file is missing, outside the data root, unreadable, malformed or over a cap.

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


@dataclass(frozen=True)
class TargetRange:
    """The range of a file's target values, gathered a chunk at a time.

    Classification needs finite non-negative integers and a largest label (the class count);
    regression needs finite values. Neither needs the values themselves.
    """

    low: float
    high: float
    finite: bool
    integral: bool

    @classmethod
    def of(cls, values: np.ndarray) -> TargetRange | None:
        """The range of ``values`` (any shape); None when there are none."""
        if values.size == 0:
            return None
        if values.dtype.kind in "iub":
            return cls(low=float(values.min()), high=float(values.max()), finite=True, integral=True)
        finite = np.isfinite(values)
        kept = values[finite]
        if kept.size == 0:
            return cls(low=0.0, high=0.0, finite=False, integral=True)
        integral = bool((kept == np.floor(kept)).all())
        return cls(low=float(kept.min()), high=float(kept.max()), finite=bool(finite.all()), integral=integral)

    def merge(self, other: TargetRange | None) -> TargetRange:
        """The range of both chunks together."""
        if other is None:
            return self
        return TargetRange(
            low=min(self.low, other.low),
            high=max(self.high, other.high),
            finite=self.finite and other.finite,
            integral=self.integral and other.integral,
        )


@dataclass(frozen=True)
class FileShape:
    """A dataset file as inspected: array shapes and target range, no feature values."""

    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    numeric: bool
    targets: TargetRange | None


DATA_ROOT = "the data root (OPTIMLAB_DATA_DIR)"
"""How messages name the data root: by its setting, never its absolute path (a 422 goes to
users, who need not learn the server's file system)."""


def resolve_data_path(relative: str, root: Path) -> Path:
    """Resolve ``relative`` under ``root``; reject escapes, missing files and unusable paths.

    Any OS error (a component over 255 bytes, a NUL byte, no permission) is a ``DataFileError``
    at ``path``: a bad path is the spec's problem, never the server's.
    """
    try:
        root = root.resolve()
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root):
            raise DataFileError(f"path {relative!r} escapes {DATA_ROOT}")
        if not candidate.exists():
            raise DataFileError(f"no file {relative!r} under {DATA_ROOT}")
        if not candidate.is_file():
            raise DataFileError(f"{relative!r} under {DATA_ROOT} is not a file")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"cannot use path {relative[:80]!r}: {_reason(exc)}") from exc
    return candidate


def _reason(exc: BaseException) -> str:
    """An OS error's reason without the (possibly huge) file name it repeats."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc)


def _stamp(path: Path) -> tuple[str, float, int]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise DataFileError(f"cannot read {path.name}: {_reason(exc)}") from exc
    return (str(path), stat.st_mtime, stat.st_size)


def _capped_stamp(path: Path, max_bytes: int) -> tuple[str, float, int]:
    stamp = _stamp(path)
    if stamp[2] > max_bytes:
        message = f"{path.name} is {stamp[2]} bytes, over this server's cap of {max_bytes} (OPTIMLAB_MAX_FILE_BYTES)"
        raise DataFileError(message)
    return stamp


# --------------------------------------------------------------------------- npz

# An .npz member that inflates more than this (and is big) is treated as a zip bomb: numeric
# data barely compresses, and a run of zeros compresses ~1000:1.
MAX_COMPRESSION_RATIO = 200
_RATIO_EXEMPT_BYTES = 16 << 20
_CHUNK_BYTES = 4 << 20
_HEADER_READERS: dict[tuple[int, int], Callable[[IO[bytes]], tuple[tuple[int, ...], bool, np.dtype[Any]]]] = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def inspect_npz(path: Path, x_key: str, y_key: str, max_bytes: int) -> FileShape:
    """Inspect an ``.npz``: both arrays' shapes from their headers and the targets' range, without
    inflating the features (cached by path, mtime and size).

    Raises:
        DataFileError: the file or a member is over ``max_bytes`` or a zip bomb, an array is
            missing, or a member is not a well-formed .npy array.
    """
    return _inspect_npz_cached(_capped_stamp(path, max_bytes), x_key, y_key, max_bytes)


@lru_cache(maxsize=64)
def _inspect_npz_cached(stamp: tuple[str, float, int], x_key: str, y_key: str, max_bytes: int) -> FileShape:
    path = Path(stamp[0])
    try:
        with zipfile.ZipFile(path) as archive:
            x_member = _npz_member(archive, path.name, x_key, "x_key", max_bytes)
            y_member = _npz_member(archive, path.name, y_key, "y_key", max_bytes)
            x_shape, x_dtype, _ = _read_npy(archive, x_member, path.name, with_range=False)
            y_shape, y_dtype, targets = _read_npy(archive, y_member, path.name, with_range=True)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"cannot read {path.name} as npz: {_reason(exc)}") from exc
    numeric = x_dtype.kind in "fiub" and y_dtype.kind in "fiub"
    return FileShape(x_shape=x_shape, y_shape=y_shape, numeric=numeric, targets=targets)


def _npz_member(archive: zipfile.ZipFile, name: str, key: str, param: str, max_bytes: int) -> zipfile.ZipInfo:
    """The zip entry of array ``key`` (looked up as ``np.load`` does), its sizes checked."""
    names = archive.namelist()
    entry = next((archive.getinfo(n) for n in (f"{key}.npy", key) if n in names), None)
    if entry is None:
        arrays = [n.removesuffix(".npy") for n in names]
        raise DataFileError(f"{name} has no array {key!r} (arrays: {arrays})", param=param)
    if entry.file_size > max_bytes:
        message = (
            f"{name}: array {key!r} is {entry.file_size} bytes uncompressed, over this server's cap "
            f"of {max_bytes} (OPTIMLAB_MAX_FILE_BYTES)"
        )
        raise DataFileError(message)
    ratio = entry.file_size / max(entry.compress_size, 1)
    if entry.file_size > _RATIO_EXEMPT_BYTES and ratio > MAX_COMPRESSION_RATIO:
        message = (
            f"{name}: array {key!r} inflates {ratio:.0f}:1 to {entry.file_size} bytes; more than "
            f"{MAX_COMPRESSION_RATIO}:1 is refused as a zip bomb"
        )
        raise DataFileError(message)
    return entry


def _read_npy(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, name: str, *, with_range: bool
) -> tuple[tuple[int, ...], np.dtype[Any], TargetRange | None]:
    """A member's shape and dtype from its .npy header, checked against the entry's size; with
    ``with_range`` its values' range too, streamed a chunk at a time."""
    key = entry.filename.removesuffix(".npy")
    with archive.open(entry) as handle:
        version = np.lib.format.read_magic(handle)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise DataFileError(f"{name}: array {key!r} has .npy format {version}, which is not supported")
        shape, _fortran, dtype = reader(handle)
        if dtype.kind not in "fiub":  # the host check rejects it; nothing to size or read
            return shape, dtype, None
        count = math.prod(shape)
        if handle.tell() + count * dtype.itemsize != entry.file_size:
            message = f"{name}: array {key!r} declares shape {shape} of {dtype} but holds another amount of data"
            raise DataFileError(message)
        return shape, dtype, _stream_range(handle, dtype, count) if with_range else None


def _stream_range(handle: IO[bytes], dtype: np.dtype[Any], count: int) -> TargetRange | None:
    per_chunk = max(1, _CHUNK_BYTES // dtype.itemsize)
    found: TargetRange | None = None
    for start in range(0, count, per_chunk):
        n = min(per_chunk, count - start)
        chunk = TargetRange.of(np.frombuffer(handle.read(n * dtype.itemsize), dtype=dtype, count=n))
        found = chunk.merge(found) if chunk is not None else found
    return found


@lru_cache(maxsize=16)
def _load_npz_cached(stamp: tuple[str, float, int], x_key: str, y_key: str) -> ArrayData:
    path = Path(stamp[0])
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFileError(f"{path.name} is a single .npy array, not an .npz archive")
        with loaded as archive:
            missing = [k for k in (x_key, y_key) if k not in archive.files]
            if missing:
                message = f"{path.name} has no array {missing[0]!r} (arrays: {archive.files})"
                raise DataFileError(message, param="x_key" if missing[0] == x_key else "y_key")
            x, y = archive[x_key], archive[y_key]
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"cannot read {path.name} as npz: {_reason(exc)}") from exc
    return ArrayData(x=np.asarray(x), y=np.asarray(y))


def load_npz(path: Path, x_key: str, y_key: str) -> ArrayData:
    """Load two arrays from an ``.npz`` file (cached by path, mtime and size); the worker's
    reader, for a file ``inspect_npz`` has passed."""
    return _load_npz_cached(_stamp(path), x_key, y_key)


# --------------------------------------------------------------------------- csv

_CSV_CHUNK_ROWS = 65_536


def inspect_csv(path: Path, target: str | int, delimiter: str, header: bool, max_bytes: int) -> FileShape:
    """Inspect a numeric csv a chunk of rows at a time: its size, every cell numeric, features
    finite, and the target column's range (cached by path, mtime and size).

    Raises:
        DataFileError: the file is over ``max_bytes``, has no rows, a non-numeric, missing or
            non-finite feature cell, or no column ``target``.
    """
    return _inspect_csv_cached(_capped_stamp(path, max_bytes), target, delimiter, header)


@lru_cache(maxsize=64)
def _inspect_csv_cached(stamp: tuple[str, float, int], target: str | int, delimiter: str, header: bool) -> FileShape:
    path = Path(stamp[0])
    names = _csv_header(path, delimiter) if header else []
    if isinstance(target, str):  # a missing column is known from the header alone
        _target_column(path.name, target, names, len(names))
    rows, width, column, targets = 0, 0, -1, None
    for first_line, table in _csv_tables(path, delimiter, header):
        if column < 0:
            column = _target_column(path.name, target, names, table.shape[1])
        bad = ~np.isfinite(table)
        bad[:, column] = False
        if bad.any():
            line = first_line + int(np.argwhere(bad)[0][0])
            raise DataFileError(f"{path.name} has a non-finite feature cell (nan or inf) on line {line}")
        chunk = TargetRange.of(table[:, column])
        targets = chunk.merge(targets) if chunk is not None else targets
        rows += table.shape[0]
        width = table.shape[1]
    if rows == 0:
        raise DataFileError(f"{path.name} has no rows")
    return FileShape(x_shape=(rows, width - 1), y_shape=(rows,), numeric=True, targets=targets)


@lru_cache(maxsize=16)
def _load_csv_cached(stamp: tuple[str, float, int], target: str | int, delimiter: str, header: bool) -> ArrayData:
    path = Path(stamp[0])
    names = _csv_header(path, delimiter) if header else []
    tables = [table for _, table in _csv_tables(path, delimiter, header)]
    if not tables:
        raise DataFileError(f"{path.name} has no rows")
    table = np.concatenate(tables)
    column = _target_column(path.name, target, names, table.shape[1])
    return ArrayData(x=np.delete(table, column, axis=1), y=table[:, column])


def load_csv(path: Path, target: str | int, delimiter: str, header: bool) -> ArrayData:
    """Load a numeric csv: every column but ``target`` is a feature; the worker's reader, for a
    file ``inspect_csv`` has passed."""
    return _load_csv_cached(_stamp(path), target, delimiter, header)


def _csv_header(path: Path, delimiter: str) -> list[str]:
    try:
        with path.open(encoding="utf-8") as handle:
            return [n.strip() for n in handle.readline().rstrip("\r\n").split(delimiter)]
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise DataFileError(f"cannot read {path.name} as csv: {_reason(exc)}") from exc


def _csv_tables(path: Path, delimiter: str, header: bool) -> Iterator[tuple[int, np.ndarray]]:
    """The data rows as float64 tables of up to ``_CSV_CHUNK_ROWS`` rows, each with the file
    line its first row came from; blank lines are skipped, every table has the same width."""
    try:
        with path.open(encoding="utf-8") as handle:
            line, width = 1, -1
            if header:
                handle.readline()
                line = 2
            while lines := list(itertools.islice(handle, _CSV_CHUNK_ROWS)):
                table = _parse_rows(path.name, lines, delimiter, line)
                if table.size and width >= 0 and table.shape[1] != width:
                    message = f"{path.name} changes from {width} to {table.shape[1]} columns on {_lines(line, lines)}"
                    raise DataFileError(message)
                if table.size:
                    width = table.shape[1]
                    yield line, table
                line += len(lines)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(f"cannot read {path.name} as csv: {_reason(exc)}") from exc


def _parse_rows(name: str, lines: list[str], delimiter: str, first_line: int) -> np.ndarray:
    """Lines of a csv as a float64 table, by numpy's C parser (empty for blank or comment lines)."""
    # Skipped here rather than by numpy, which warns on a chunk with no data (and silencing that
    # with catch_warnings is not thread-safe: the API checks files in several threads at once).
    if all(not line.strip() or line.lstrip().startswith("#") for line in lines):
        return np.empty((0, 0))
    try:
        return np.loadtxt(lines, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except TypeError as exc:
        raise DataFileError(f"cannot split {name} on {delimiter!r}: {exc}", param="delimiter") from exc
    except ValueError as exc:  # numpy's row numbers count from the chunk, so name the file's lines
        where = _lines(first_line, lines)
        raise DataFileError(f"{name} has empty, non-numeric or missing cells on {where} ({exc})") from exc


def _lines(first: int, lines: list[str]) -> str:
    last = first + len(lines) - 1
    return f"line {first}" if last == first else f"lines {first}-{last}"


def _target_column(name: str, target: str | int, names: list[str], width: int) -> int:
    if isinstance(target, str):
        if target not in names:
            raise DataFileError(f"{name} has no column {target!r} (columns: {names})", param="target")
        return names.index(target)
    column = target if target >= 0 else width + target
    if not 0 <= column < width:
        raise DataFileError(f"{name} has {width} columns; no column {target}", param="target")
    return column


# --------------------------------------------------------------------------- vision


def vision_paths(name: str, root: Path) -> list[Path]:
    """The files a vision dataset needs, each as plain or ``.gz``; raise if any is missing."""
    folder, train, test = VISION_FILES[name]
    found = []
    for file in (*train, *test):
        plain = root / folder / file
        candidates = [plain, plain.with_name(plain.name + ".gz")]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            raise DataFileError(f"{name} needs {folder}/{file} under {DATA_ROOT}")
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
