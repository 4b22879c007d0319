"""scikit-learn's bundled toy datasets read straight from its data files, without importing
scikit-learn: the import costs 1-2.7 s, which a fresh worker's first job would pay for 1797
digits. The arrays equal ``sklearn.datasets.load_*``'s (``tests/optim_engine/test_bundled.py``);
where a file is missing or unexpected (another scikit-learn layout), the caller falls back to
scikit-learn's own loader.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from optim_engine._data_files import ArrayData

CSV_FILES = {"iris": "iris.csv", "wine": "wine_data.csv", "breast_cancer": "breast_cancer.csv"}
"""Datasets stored as scikit-learn's CSV: a header ``n_samples,n_features,...``, then rows of
features and an integer class."""


def needs_sklearn(dataset: Any) -> bool:
    """Whether building ``dataset`` (a dataset spec) imports scikit-learn: a bundled dataset this
    module cannot read, or whose files are not where it looks."""
    name = getattr(dataset, "name", None)
    if name not in ("digits", "iris", "wine", "breast_cancer", "diabetes"):
        return False
    return name not in ("digits", *CSV_FILES) or data_dir() is None


@functools.cache
def data_dir() -> Path | None:
    """scikit-learn's ``datasets/data`` folder, found without importing scikit-learn, once per
    process (every job asks twice; looking it up cost ~0.3 ms each time)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return folder if folder.is_dir() else None


def load(name: str) -> ArrayData | None:
    """``name``'s arrays, or None when this reader does not know it or its file is not there.

    Read once per process and kept (read-only; the largest, digits, is 0.9 MB): parsing
    digits' CSV took 5-6 ms, 8% of a 15-epoch MLP job on it, paid again by every job."""
    folder = data_dir()
    arrays = _read(name, folder) if folder is not None else None
    if arrays is not None:
        arrays.x.flags.writeable = False
        arrays.y.flags.writeable = False
    return arrays


@functools.cache
def _read(name: str, folder: Path) -> ArrayData | None:
    try:
        if name == "digits":
            with gzip.open(folder / "digits.csv.gz", "rt") as text:
                table = np.loadtxt(text, delimiter=",")
            return ArrayData(x=table[:, :-1], y=table[:, -1].astype(int, copy=False))
        if name in CSV_FILES:
            return _csv(folder / CSV_FILES[name])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _csv(path: Path) -> ArrayData:
    with path.open(newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows)
        n_samples, n_features = int(header[0]), int(header[1])
        x = np.empty((n_samples, n_features))
        y = np.empty((n_samples,), dtype=int)
        count = 0
        for count, row in enumerate(rows, start=1):
            x[count - 1] = np.asarray(row[:-1], dtype=np.float64)
            y[count - 1] = np.asarray(row[-1], dtype=int)
    if count != n_samples:
        raise ValueError(f"{path.name}: {count} rows, header says {n_samples}")
    return ArrayData(x=x, y=y)
