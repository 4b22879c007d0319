"""Dataset variants, and what the spec alone tells about a dataset's shape (``DatasetInfo``).

Synthetic, scikit-learn and vision datasets have shapes known from the spec; a file dataset's
shape is the file's, which only the host can read (``optim_engine.spec.host``). A 2-D function
(``rosenbrock``, ...; ``optim_engine.spec.surfaces``) is no data at all: the function's value is
the loss of a ``point`` model. An installed plugin's dataset (entry-point group
``optimlab.datasets``, ``optim_engine.plugins``) has the shape its ``describe`` reads on the host;
one that fails to load is recorded in ``DATASET_PLUGIN_ERRORS`` and refused at ``dataset``.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, Field, field_validator

from optim_engine.plugins import DatasetPlugin, discover
from optim_engine.spec._base import NonNegative, StrictModel, Width, reject_known, variant_names
from optim_engine.spec.errors import spec_error
from optim_engine.spec.models import plugin_variant

Task = Literal["classification", "regression"]
InfoTask = Literal["classification", "regression", "function"]
"""A dataset's task as ``DatasetInfo`` states it: a file or synthetic task, or a 2-D function."""
SURFACE_NAMES = ("rosenbrock", "beale", "rastrigin", "saddle", "quadratic")
Samples = Annotated[int, Field(ge=2, le=10_000_000)]


class _DatasetBase(StrictModel):
    val_fraction: Annotated[float, Field(ge=0.0, le=0.9)] = Field(
        default=0.2, description="Share of the data held out for validation (0: no validation set)."
    )
    split_seed: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Seeds the train/validation split (and synthetic data); not the run seed."
    )


class SyntheticRegressionParams(StrictModel):
    n_samples: Samples = 1024
    n_features: Width = 10
    n_targets: Annotated[int, Field(ge=1, le=1024)] = 1
    noise: NonNegative = 0.1


class SyntheticClassificationParams(StrictModel):
    n_samples: Samples = 1024
    n_features: Width = 20
    n_classes: Annotated[int, Field(ge=2, le=1000)] = 2
    class_sep: NonNegative = 1.0


class SyntheticRegressionDataset(_DatasetBase):
    """Gaussian inputs, a random linear target plus Gaussian noise (the seed article's problem)."""

    name: Literal["synthetic_regression"]
    params: SyntheticRegressionParams = Field(default_factory=SyntheticRegressionParams)


class SyntheticClassificationDataset(_DatasetBase):
    """Gaussian blobs around random class centres."""

    name: Literal["synthetic_classification"]
    params: SyntheticClassificationParams = Field(default_factory=SyntheticClassificationParams)


class _TabularParams(StrictModel):
    standardize: bool = Field(default=True, description="Scale features with the training split's mean and std.")


class SklearnDataset(_DatasetBase):
    """A dataset bundled with scikit-learn (no download)."""

    name: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]
    params: _TabularParams = Field(default_factory=_TabularParams)


class FileParams(_TabularParams):
    path: str = Field(description="Relative to the data root (OPTIMLAB_DATA_DIR).")
    task: Task = "classification"

    @field_validator("path")
    @classmethod
    def _inside_the_root(cls, path: str) -> str:
        # What the text alone shows; links that lead out are the host's to find (resolve_data_path).
        normal = posixpath.normpath(path)
        if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
            raise spec_error(f"path {path!r} escapes the data root")
        return path


class NpzParams(FileParams):
    x_key: str = "x"
    y_key: str = "y"


class CsvParams(FileParams):
    target: str | int = Field(default=-1, description="Target column: a header name or an index (-1: last).")
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="One character.")
    header: bool = True


class NpzDataset(_DatasetBase):
    """Arrays from an .npz file under the data root."""

    name: Literal["npz"]
    params: NpzParams


class CsvDataset(_DatasetBase):
    """A numeric csv file under the data root."""

    name: Literal["csv"]
    params: CsvParams


class VisionParams(StrictModel):
    use_test_split: bool = Field(
        default=True, description="Validate on the official test split (else val_fraction of the training split)."
    )
    limit: Annotated[int, Field(ge=2)] | None = Field(default=None, description="Use only the first N training images.")
    standardize: bool = False


class VisionDataset(_DatasetBase):
    """MNIST, FashionMNIST or CIFAR-10 from the data root, in torchvision's file layout."""

    name: Literal["mnist", "fashion_mnist", "cifar10"]
    params: VisionParams = Field(default_factory=VisionParams)


class SurfaceParams(StrictModel):
    steps_per_epoch: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=10, description="Optimizer steps per reported epoch (batch_size is ignored: there is no data)."
    )


class QuadraticParams(SurfaceParams):
    condition: Annotated[float, Field(ge=1.0, le=1e6, allow_inf_nan=False)] = Field(
        default=10.0, description="Curvature of y over that of x in 0.5 (x^2 + condition y^2)."
    )


class SurfaceDataset(StrictModel):
    """A 2-D test function whose value is the loss of a ``point`` model (one optimizer step per step)."""

    name: Literal["rosenbrock", "beale", "rastrigin", "saddle"]
    params: SurfaceParams = Field(default_factory=SurfaceParams)


class QuadraticDataset(StrictModel):
    """The ill-conditioned quadratic 0.5 (x^2 + condition y^2), the textbook case of lr > 2/curvature."""

    name: Literal["quadratic"]
    params: QuadraticParams = Field(default_factory=QuadraticParams)


FunctionDataset = SurfaceDataset | QuadraticDataset


class PluginDataset(_DatasetBase):
    """The base of every plugin dataset variant: ``name`` is the plugin's, ``params`` its
    ``params_model``; ``plugin`` is the ``DatasetPlugin`` it came from."""

    if TYPE_CHECKING:  # fields every variant adds (see _plugin_variant)
        name: str
        params: Any  # the plugin's params_model

    plugin: ClassVar[DatasetPlugin]

    @property
    def task(self) -> Task:
        """The params' ``task`` when the plugin's params model has one, else the plugin's."""
        task = getattr(self.params, "task", self.plugin.task)
        return task if task == "regression" else "classification"


def _plugin_variant(plugin: DatasetPlugin) -> type[PluginDataset]:
    return plugin_variant(plugin, PluginDataset, "dataset")


_BUILT_IN: list[type[StrictModel]] = [
    SyntheticRegressionDataset,
    SyntheticClassificationDataset,
    SklearnDataset,
    NpzDataset,
    CsvDataset,
    VisionDataset,
    SurfaceDataset,
    QuadraticDataset,
]
DATASET_PLUGIN_GROUP = "optimlab.datasets"
PLUGIN_DATASETS, DATASET_PLUGIN_ERRORS = discover(
    DATASET_PLUGIN_GROUP, DatasetPlugin, {name for v in _BUILT_IN for name in variant_names(v)}, _plugin_variant
)
"""The variants of the plugins that loaded, and the entry points that failed (name -> why)."""
_USABLE = {name for v in [*_BUILT_IN, *PLUGIN_DATASETS] for name in variant_names(v)}
# A failed plugin whose entry point is named like a usable dataset does not shadow it.
_UNUSABLE = {name: reason for name, reason in DATASET_PLUGIN_ERRORS.items() if name not in _USABLE}

if TYPE_CHECKING:
    DatasetSpec = (
        SyntheticRegressionDataset
        | SyntheticClassificationDataset
        | SklearnDataset
        | NpzDataset
        | CsvDataset
        | VisionDataset
        | SurfaceDataset
        | QuadraticDataset
        | PluginDataset
    )
else:
    DatasetSpec = Annotated[
        Union[tuple(_BUILT_IN + PLUGIN_DATASETS)],  # noqa: UP007
        Field(discriminator="name"),
        reject_known(_UNUSABLE, "dataset"),
    ]

FileDataset = NpzDataset | CsvDataset


class DatasetInfo(BaseModel):
    """What the other parts of a spec need to know about a dataset, without loading it as tensors."""

    task: InfoTask
    n_features: int
    n_outputs: int  # classes for classification, targets for regression
    n_samples: int
    image_shape: tuple[int, int, int] | None = None


_SKLEARN_INFO = {
    "digits": DatasetInfo(task="classification", n_features=64, n_outputs=10, n_samples=1797, image_shape=(1, 8, 8)),
    "iris": DatasetInfo(task="classification", n_features=4, n_outputs=3, n_samples=150),
    "wine": DatasetInfo(task="classification", n_features=13, n_outputs=3, n_samples=178),
    "breast_cancer": DatasetInfo(task="classification", n_features=30, n_outputs=2, n_samples=569),
    "diabetes": DatasetInfo(task="regression", n_features=10, n_outputs=1, n_samples=442),
}
_VISION_INFO = {
    "mnist": DatasetInfo(
        task="classification", n_features=784, n_outputs=10, n_samples=60_000, image_shape=(1, 28, 28)
    ),
    "fashion_mnist": DatasetInfo(
        task="classification", n_features=784, n_outputs=10, n_samples=60_000, image_shape=(1, 28, 28)
    ),
    "cifar10": DatasetInfo(
        task="classification", n_features=3072, n_outputs=10, n_samples=50_000, image_shape=(3, 32, 32)
    ),
}


def static_info(dataset: Any) -> DatasetInfo | None:
    """A dataset's task and shape as the spec alone states them; None for a file or plugin
    dataset (the host reads those: ``optim_engine.spec.host.dataset_info``)."""
    if isinstance(dataset, SyntheticRegressionDataset):
        p = dataset.params
        return DatasetInfo(task="regression", n_features=p.n_features, n_outputs=p.n_targets, n_samples=p.n_samples)
    if isinstance(dataset, SyntheticClassificationDataset):
        c = dataset.params
        return DatasetInfo(task="classification", n_features=c.n_features, n_outputs=c.n_classes, n_samples=c.n_samples)
    if isinstance(dataset, SklearnDataset):
        return _SKLEARN_INFO[dataset.name]
    if isinstance(dataset, SurfaceDataset | QuadraticDataset):
        # Two coordinates in, one value out; the "samples" of an epoch are its steps.
        return DatasetInfo(task="function", n_features=2, n_outputs=1, n_samples=dataset.params.steps_per_epoch)
    if isinstance(dataset, VisionDataset):
        info = _VISION_INFO[dataset.name]
        if dataset.params.limit is not None:
            info = info.model_copy(update={"n_samples": min(info.n_samples, dataset.params.limit)})
        return info
    return None


def dataset_task(dataset: Any) -> InfoTask:
    """The task of a dataset, known from the spec for every kind (a file dataset declares it, a
    plugin dataset's plugin or params do)."""
    if isinstance(dataset, PluginDataset):
        return dataset.task
    info = static_info(dataset)
    return info.task if info is not None else dataset.params.task  # type: ignore[no-any-return]
