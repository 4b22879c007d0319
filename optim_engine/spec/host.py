"""What this host can provide for a spec: its data files and the optional extras.

The one place where whether a spec can train depends on the machine. ``host_problems`` is
called by the API at submission and by the worker before training; the engine's builders read
file datasets' shapes through ``dataset_info``. Both inspect a file (``file_shape``: headers,
row counts, the targets' range, under size caps) rather than load it; only the worker's
builder loads one (``file_arrays``). A plugin dataset's shape is what its ``describe`` reads
here (``plugin_info``). (A plugin that failed to load is not here: a spec naming it cannot even
be parsed, so validation rejects it; see ``PLUGIN_ERRORS`` and its model and dataset kin.)
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from optim_engine import _data_files
from optim_engine.plugins import DatasetShape
from optim_engine.settings import get_settings
from optim_engine.spec.datasets import (
    CsvDataset,
    DatasetInfo,
    FileDataset,
    NpzDataset,
    PluginDataset,
    VisionDataset,
    static_info,
)
from optim_engine.spec.errors import FieldProblem
from optim_engine.spec.job import JobSpec, cross_field_problems
from optim_engine.spec.optimizers import PYTORCH_OPTIMIZER_EXTRA


def resolve_root(data_root: Path | str | None = None) -> Path:
    """``data_root``, or the settings' data directory when it is None."""
    return Path(data_root) if data_root is not None else Path(get_settings().data_dir)


def file_arrays(dataset: FileDataset, root: Path) -> _data_files.ArrayData:
    """Load a file dataset's arrays: the worker's builder, once the host check has passed
    (cached by path, mtime and size)."""
    path = _data_files.resolve_data_path(dataset.params.path, root)
    if isinstance(dataset, NpzDataset):
        return _data_files.load_npz(path, dataset.params.x_key, dataset.params.y_key)
    return _data_files.load_csv(path, dataset.params.target, dataset.params.delimiter, dataset.params.header)


def file_shape(dataset: FileDataset, root: Path) -> _data_files.FileShape:
    """Inspect a file dataset's file without loading its features: array shapes and the targets'
    range, under the ``max_file_bytes`` cap (cached by path, mtime and size)."""
    path = _data_files.resolve_data_path(dataset.params.path, root)
    max_bytes = get_settings().max_file_bytes
    if isinstance(dataset, NpzDataset):
        return _data_files.inspect_npz(path, dataset.params.x_key, dataset.params.y_key, max_bytes)
    params = dataset.params
    return _data_files.inspect_csv(path, params.target, params.delimiter, params.header, max_bytes)


def _file_info(dataset: FileDataset, root: Path) -> DatasetInfo:
    shape = file_shape(dataset, root)
    x, y = shape.x_shape, shape.y_shape
    if not shape.numeric:
        raise _data_files.DataFileError("features and targets must be numeric")
    if len(x) < 2 or x[0] < 2 or math.prod(x[1:]) == 0:
        raise _data_files.DataFileError(f"features must have shape (n_samples >= 2, n_features >= 1), got {x}")
    if not y or y[0] != x[0]:
        raise _data_files.DataFileError(f"{x[0]} feature rows but targets of shape {y}")
    # The param that picks the targets: where a bad target value is the spec's to fix.
    target = "y_key" if isinstance(dataset, NpzDataset) else "target"
    if shape.targets is not None and not shape.targets.finite:
        raise _data_files.DataFileError("targets must be finite; the file has nan or inf targets", param=target)
    n_features = math.prod(x[1:])
    if dataset.params.task == "classification":
        n_classes = _class_count(shape, target)
        return DatasetInfo(task="classification", n_features=n_features, n_outputs=n_classes, n_samples=x[0])
    n_targets = math.prod(y[1:])
    return DatasetInfo(task="regression", n_features=n_features, n_outputs=n_targets, n_samples=x[0])


def _class_count(shape: _data_files.FileShape, target: str) -> int:
    """Classes a file's labels imply: labels are class indices 0..K-1, K under ``max_outputs``
    (a label of 1e12 would otherwise build a model with 1e12 outputs)."""
    labels = shape.targets
    if len(shape.y_shape) != 1 or labels is None or not labels.integral:
        message = "classification targets must be a 1-D array of class indices 0..K-1"
        raise _data_files.DataFileError(message, param="task")
    if labels.low < 0:
        message = f"class labels must be non-negative integers; the file has {labels.low:g}"
        raise _data_files.DataFileError(message, param=target)
    cap = get_settings().max_outputs
    if labels.high >= cap:
        message = (
            f"the largest class label is {labels.high:g}: more classes than this server's cap "
            f"of {cap} outputs (OPTIMLAB_MAX_OUTPUTS)"
        )
        raise _data_files.DataFileError(message, param=target)
    return max(int(labels.high) + 1, 2)


def plugin_info(dataset: PluginDataset, root: Path) -> DatasetInfo:
    """A plugin dataset's task and shape, as its ``describe`` reads them on this host.

    Raises:
        DataFileError: ``describe`` raised one (at its ``param``), or raised anything else or
            returned no ``DatasetShape`` (at ``dataset``): third-party code never makes a 500.
    """
    try:
        shape = dataset.plugin.describe(dataset.params, root)
        if not isinstance(shape, DatasetShape):  # a dict of the same fields will do
            shape = DatasetShape.model_validate(shape)
    except _data_files.DataFileError:
        raise
    except ValidationError as exc:
        message = f"the {dataset.name} plugin's describe gave no valid DatasetShape: {exc}"
        raise _data_files.DataFileError(message, param="") from exc
    except Exception as exc:  # third-party code: whatever it raises is the dataset's problem
        message = f"the {dataset.name} plugin could not describe it: {type(exc).__name__}: {exc}"
        raise _data_files.DataFileError(message, param="") from exc
    dims = shape.input_shape
    image = dims if len(dims) == 3 else (1, *dims) if len(dims) == 2 else None
    return DatasetInfo(
        task=dataset.task,
        n_features=math.prod(dims),
        n_outputs=shape.n_outputs,
        n_samples=shape.n_samples,
        image_shape=image,  # type: ignore[arg-type]
    )


def dataset_info(dataset: Any, root: Path | None = None) -> DatasetInfo:
    """A dataset's task and shape; a file dataset's file is read (and cached) to find out, a
    plugin dataset's ``describe`` is asked.

    Raises:
        DataFileError: the file is missing, outside the data root, unreadable or malformed.
    """
    info = static_info(dataset)
    if info is not None:
        return info
    if isinstance(dataset, PluginDataset):
        return plugin_info(dataset, resolve_root(root))
    return _file_info(dataset, resolve_root(root))


def extra_missing(extra: str | None) -> bool:
    """Whether this host lacks the pip extra an optimizer variant needs (its ``extra``)."""
    return extra == PYTORCH_OPTIMIZER_EXTRA and importlib.util.find_spec("pytorch_optimizer") is None


def _dataset_problems(spec: JobSpec, root: Path) -> list[FieldProblem]:
    dataset = spec.dataset
    if isinstance(dataset, VisionDataset):
        try:
            _data_files.vision_paths(dataset.name, root)
        except _data_files.DataFileError as exc:
            # The builder downloads missing files when the host allows it and can.
            can_download = get_settings().allow_download and importlib.util.find_spec("torchvision") is not None
            return [] if can_download else [(("dataset",), str(exc))]
        return []
    if not isinstance(dataset, NpzDataset | CsvDataset | PluginDataset):  # the spec states its shape
        return []
    try:
        info = plugin_info(dataset, root) if isinstance(dataset, PluginDataset) else _file_info(dataset, root)
    except _data_files.DataFileError as exc:
        where = ("dataset", "params", exc.param) if exc.param else ("dataset",)
        return [(where, str(exc))]
    return cross_field_problems(spec, info)


def host_problems(spec: JobSpec, data_root: Path | None = None) -> list[FieldProblem]:
    """Every problem this host has with ``spec``; empty when it can train it here.

    Checks what validation cannot, because it depends on the machine: a file dataset's file
    (inside the data root, readable, well formed, under ``max_file_bytes``, class labels below
    ``max_outputs``; inspected, never loaded) and the rules that need its shape (model in/out
    features, loss vs classes, early stopping's validation set); a plugin dataset's shape, as its
    ``describe`` reads it, and the same rules; vision files (unless they can be downloaded); the
    optimizer's extra. ``data_root`` None means the settings' data directory.
    """
    problems: list[FieldProblem] = []
    optimizer = spec.optimizer
    if extra_missing(optimizer.extra):
        message = f"{optimizer.name} needs the {optimizer.extra} package: pip install 'optimlab[{optimizer.extra}]'"
        problems.append((("optimizer",), message))
    problems += _dataset_problems(spec, resolve_root(data_root))
    return problems
