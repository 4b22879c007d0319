"""Dataset registry: every dataset spec becomes train/validation tensors on the run's device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from optim_engine import _bundled, _data_files
from optim_engine._optim import resolve
from optim_engine.settings import get_settings
from optim_engine.spec import (
    BCEWithLogitsLoss,
    DatasetInfo,
    JobSpec,
    QuadraticDataset,
    SklearnDataset,
    SurfaceDataset,
    SyntheticClassificationDataset,
    SyntheticRegressionDataset,
    VisionDataset,
)
from optim_engine.spec.datasets import SURFACE_NAMES, PluginDataset
from optim_engine.spec.host import dataset_info, file_arrays, resolve_root


@dataclass(frozen=True)
class TensorData:
    """A dataset as tensors: ``x_*`` are 2-D float32; ``y_*`` int64 labels or 2-D float32 targets."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    info: DatasetInfo

    @property
    def has_validation(self) -> bool:
        """Whether there is a validation split."""
        return self.x_val.shape[0] > 0

    def to(self, device: torch.device) -> TensorData:
        """The same data on ``device``."""
        x_train, y_train, x_val, y_val = (t.to(device) for t in (self.x_train, self.y_train, self.x_val, self.y_val))
        return TensorData(x_train, y_train, x_val, y_val, self.info)


def _synthetic_regression(spec: SyntheticRegressionDataset, _: Path) -> _data_files.ArrayData:
    p = spec.params
    rng = np.random.default_rng(spec.split_seed)
    x = rng.standard_normal((p.n_samples, p.n_features))
    weights = rng.standard_normal((p.n_features, p.n_targets))
    bias = rng.standard_normal(p.n_targets)
    y = x @ weights + bias + p.noise * rng.standard_normal((p.n_samples, p.n_targets))
    return _data_files.ArrayData(x=x, y=y)


def _synthetic_classification(spec: SyntheticClassificationDataset, _: Path) -> _data_files.ArrayData:
    p = spec.params
    rng = np.random.default_rng(spec.split_seed)
    centres = rng.standard_normal((p.n_classes, p.n_features)) * p.class_sep
    y = rng.integers(0, p.n_classes, size=p.n_samples)
    x = centres[y] + rng.standard_normal((p.n_samples, p.n_features))
    return _data_files.ArrayData(x=x, y=y)


def _sklearn(spec: SklearnDataset, _: Path) -> _data_files.ArrayData:
    if (arrays := _bundled.load(spec.name)) is not None:  # the same arrays, without importing sklearn
        return arrays
    from sklearn import datasets  # imported here: sklearn is slow to import and only these need it

    loader: Callable[..., Any] = getattr(datasets, f"load_{spec.name}")
    bunch = loader()
    return _data_files.ArrayData(x=np.asarray(bunch.data), y=np.asarray(bunch.target))


def _vision(spec: VisionDataset, root: Path) -> _data_files.ArrayData:
    try:
        _data_files.vision_paths(spec.name, root)
    except _data_files.DataFileError:
        if not get_settings().allow_download:
            raise
        _download_vision(spec.name, root)
    arrays = _data_files.load_vision(spec.name, root.resolve())
    if spec.params.limit is not None:
        arrays = _data_files.ArrayData(
            x=arrays.x[: spec.params.limit], y=arrays.y[: spec.params.limit], x_test=arrays.x_test, y_test=arrays.y_test
        )
    if not spec.params.use_test_split:
        arrays = _data_files.ArrayData(x=arrays.x, y=arrays.y)
    return arrays


def _download_vision(name: str, root: Path) -> None:
    import torchvision  # optional; only for OPTIMLAB_ALLOW_DOWNLOAD=true

    cls = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}[name]
    for train in (True, False):
        getattr(torchvision.datasets, cls)(str(root), train=train, download=True)


def _plugin(spec: PluginDataset, root: Path) -> _data_files.ArrayData:
    """A plugin's ``load(params, root) -> (x, y)`` (``DatasetPlugin.target``), imported here, on
    the worker; its arrays must have the rows its ``describe`` stated (the host check's shape)."""
    load = resolve(spec.plugin.target)
    loaded = load(spec.params, root)
    if not isinstance(loaded, tuple | list) or len(loaded) != 2:
        raise TypeError(
            f"the {spec.name} plugin's {spec.plugin.target} must return (x, y), not {type(loaded).__name__}"
        )
    x, y = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a) for a in loaded)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"the {spec.name} plugin loaded x of shape {x.shape} and y of shape {y.shape}: rows differ")
    return _data_files.ArrayData(x=x, y=y)


def _no_data(spec: Any, _: Path) -> NoReturn:
    raise ValueError(f"{spec.name} is a 2-D function, not data: optim_engine.train runs it on a point model")


DATASETS: dict[str, Callable[[Any, Path], _data_files.ArrayData]] = {
    "synthetic_regression": _synthetic_regression,
    "synthetic_classification": _synthetic_classification,
    **{name: _sklearn for name in ("digits", "iris", "wine", "breast_cancer", "diabetes")},
    "npz": file_arrays,
    "csv": file_arrays,
    **{name: _vision for name in ("mnist", "fashion_mnist", "cifar10")},
    **{name: _no_data for name in SURFACE_NAMES},
}


def _split(arrays: _data_files.ArrayData, val_fraction: float, split_seed: int) -> tuple[np.ndarray, ...]:
    if arrays.x_test is not None and arrays.y_test is not None:
        return arrays.x, arrays.y, arrays.x_test, arrays.y_test
    n = arrays.x.shape[0]
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = int(n * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return arrays.x[train], arrays.y[train], arrays.x[val], arrays.y[val]


def build_dataset(
    spec: JobSpec | dict[str, Any], device: torch.device | str = "cpu", *, data_root: Path | None = None
) -> TensorData:
    """Build a spec's train and validation tensors (float32 features, standardized if asked).

    The split and any synthetic data depend on ``dataset.split_seed`` only, never on the run's
    seed, so every seed of a sweep sees the same validation set. With ``val_fraction`` 0 (or too
    few samples for one) the validation tensors are empty and ``has_validation`` is False: the
    loops then report no validation metrics.
    """
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    root = resolve_root(data_root)
    info = dataset_info(spec.dataset, root)
    if isinstance(spec.dataset, SurfaceDataset | QuadraticDataset):
        _no_data(spec.dataset, root)
    if isinstance(spec.dataset, PluginDataset):
        arrays = _plugin(spec.dataset, root)
    else:
        arrays = DATASETS[spec.dataset.name](spec.dataset, root)
    x_train, y_train, x_val, y_val = _split(arrays, spec.dataset.val_fraction, spec.dataset.split_seed)
    # Explicit widths, not -1: an empty validation split (val_fraction 0) has no width to infer.
    x_train = x_train.reshape(x_train.shape[0], info.n_features).astype(np.float64)
    x_val = x_val.reshape(x_val.shape[0], info.n_features).astype(np.float64)
    if getattr(spec.dataset.params, "standardize", False):
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std < 1e-8] = 1.0
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std

    def targets(y: np.ndarray) -> torch.Tensor:
        if info.task == "classification":
            labels = torch.as_tensor(y.astype(np.int64))
            return labels.float().unsqueeze(1) if isinstance(spec.loss, BCEWithLogitsLoss) else labels
        return torch.as_tensor(y.reshape(y.shape[0], info.n_outputs), dtype=torch.float32)

    data = TensorData(
        x_train=torch.as_tensor(x_train, dtype=torch.float32),
        y_train=targets(y_train),
        x_val=torch.as_tensor(x_val, dtype=torch.float32),
        y_val=targets(y_val),
        info=info,
    )
    return data.to(torch.device(device))
