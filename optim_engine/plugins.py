"""The contract for third-party optimizers, models and datasets (entry-point groups
``optimlab.optimizers``, ``optimlab.models`` and ``optimlab.datasets``).

This module imports neither torch nor the spec, so a plugin package can import it while the
spec is discovering plugins. Everything a plugin's torch-free module may use is here: the three
plugin types, ``DatasetShape`` (what a dataset plugin's ``describe`` returns), and the data-file
helpers (``data_file``, ``inspect_npz``, ``DataFileError``) that hold a plugin's files to the same
rules as the built-in file datasets'.

Every group follows the same rules. The entry point names a plugin *instance*::

    [project.entry-points."optimlab.models"]
    small_resnet = "my_package.optimlab:model"

    [project.entry-points."optimlab.datasets"]
    my_npz = "my_package.optimlab:dataset"

The module that defines it must not import torch: the API imports it to validate specs and
serve the catalog. The torch side is a ``target`` string, ``"module:function"``, imported only
where training happens. ``params_model`` is a pydantic model of the plugin's params (use
``extra="forbid"``); it is what the spec validates, what the catalog shows as JSON schema, and
what the builder receives. An entry point that fails to load (its module raises, it names
something else, its name is taken) breaks nothing: the spec records why (``PLUGIN_ERRORS``,
``MODEL_PLUGIN_ERRORS``, ``DATASET_PLUGIN_ERRORS``), the catalog lists it as unavailable with
that reason, and a spec naming it is rejected at ``optimizer``, ``model`` or ``dataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from optim_engine._data_files import DataFileError, FileShape, resolve_data_path
from optim_engine._data_files import inspect_npz as _inspect_npz
from optim_engine.settings import get_settings

log = logging.getLogger(__name__)

PluginName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
Target = Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$", description="Import path, 'module:attribute'.")]

__all__ = [
    "DataFileError",
    "DatasetPlugin",
    "DatasetShape",
    "FileShape",
    "ModelPlugin",
    "OptimizerPlugin",
    "data_file",
    "inspect_npz",
]


class OptimizerPlugin(BaseModel):
    """What a package registers under the ``optimlab.optimizers`` entry-point group.

    ``target`` is the ``torch.optim.Optimizer`` subclass; ``params_model`` its constructor's
    keyword arguments besides ``params`` and ``lr``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: PluginName
    target: str = Field(description="Import path of the torch.optim.Optimizer subclass, 'module:Class'.")
    params_model: type[BaseModel]
    default_lr: float = 1e-3
    description: str = ""


class ModelPlugin(BaseModel):
    """What a package registers under the ``optimlab.models`` entry-point group.

    ``target`` names ``build(params, info, n_outputs) -> torch.nn.Module``: ``params`` an
    instance of ``params_model``, ``info`` the dataset's ``optim_engine.spec.DatasetInfo``
    (``n_features``, ``n_outputs``, ``task``, ``image_shape`` = (C, H, W) or None) and
    ``n_outputs`` the outputs the loss needs (classes, targets, or 1 for bce_with_logits).
    The module takes float32 inputs of shape ``[batch, info.n_features]`` (images flattened, as
    every dataset gives them: ``x.view(-1, *info.image_shape)`` restores them) and returns
    ``[batch, n_outputs]``. The engine seeds torch before calling it, so a run's initial weights
    depend on the spec's seed only.

    ``parameter_count(params, info, n_outputs) -> int``, torch-free, lets the server's caps on
    parameters and model memory hold the plugin's models at submission; without it they cannot
    (the catalog says so). ``needs_image`` puts the model on datasets with an image shape only:
    any other dataset is refused at ``model`` before a worker sees it.

    A plugin model never trains in a pack (``packable`` is false in the catalog): a sweep of it
    runs one job per trial.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: PluginName
    target: Target
    params_model: type[BaseModel]
    description: str = ""
    needs_image: bool = False
    parameter_count: Callable[[Any, Any, int], int] | None = None


class DatasetShape(BaseModel):
    """A dataset plugin's shape, as its ``describe`` reads it: the spec's rules (model in/out
    features, loss vs classes, validation split) and the server's cost caps use it."""

    model_config = ConfigDict(frozen=True)

    n_samples: Annotated[int, Field(ge=2)]
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        min_length=1,
        max_length=3,
        description="One sample's features: (F,), (H, W) or (C, H, W); 2-D and 3-D shapes are images.",
    )
    n_outputs: Annotated[int, Field(ge=1)] = Field(description="Classes (labels 0..n-1), or regression targets.")


class DatasetPlugin(BaseModel):
    """What a package registers under the ``optimlab.datasets`` entry-point group.

    Two callables, both given ``params`` (a ``params_model`` instance) and the host's data root
    (``OPTIMLAB_DATA_DIR``, a ``Path``):

    - ``describe(params, root) -> DatasetShape``, a torch-free callable on the plugin object,
      runs in the API at submission and in the worker before training (the host check). It
      should inspect rather than load: ``data_file`` and ``inspect_npz`` hold files to the
      built-in rules (inside the data root, under ``OPTIMLAB_MAX_FILE_BYTES``). A
      ``DataFileError(message, param=...)`` it raises is a 422 at ``dataset.params.<param>``
      (and a failed job with the message, should the file change after submission); any other
      exception is one at ``dataset``.
    - ``target`` names ``load(params, root) -> (x, y)``, run only by the worker: ``x`` any
      array-like with ``n_samples`` rows of ``input_shape``, ``y`` class indices 0..K-1
      (classification) or ``n_samples`` rows of targets (regression). numpy arrays or tensors.

    The engine then treats the arrays like an ``npz`` dataset's: the split by ``val_fraction``
    and ``split_seed`` (fields every dataset spec has), flattening to float32 features, and
    standardization when ``params_model`` has a ``standardize`` field that is true. ``task`` is
    the plugin's, unless ``params_model`` has a ``task`` field, whose value wins. So a plugin
    dataset trains with the built-in models whose shapes fit (linear, mlp; cnn when its
    ``input_shape`` is an image) and with any plugin model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: PluginName
    target: Target
    params_model: type[BaseModel]
    describe: Callable[[Any, Path], DatasetShape]
    task: Literal["classification", "regression"] = "classification"
    description: str = ""


def data_file(relative: str, root: Path) -> Path:
    """``relative`` resolved under the data root ``root``, as the built-in file datasets do.

    Raises:
        DataFileError: at ``path``: the path escapes the root, the file is missing or not a file.
    """
    return resolve_data_path(relative, root)


def inspect_npz(path: Path, x_key: str = "x", y_key: str = "y") -> FileShape:
    """Two arrays' shapes (and the targets' range: ``targets.low``, ``high``, ``integral``,
    ``finite``) from an ``.npz`` without inflating the features, under the host's
    ``OPTIMLAB_MAX_FILE_BYTES`` cap and zip-bomb guard (cached by path, mtime and size).

    Raises:
        DataFileError: the file or a member is too big, an array is missing (at ``x_key`` or
            ``y_key``), or a member is not a well-formed .npy array.
    """
    return _inspect_npz(path, x_key, y_key, get_settings().max_file_bytes)


# --------------------------------------------------------------------------- discovery (the spec's)

P = TypeVar("P", OptimizerPlugin, ModelPlugin, DatasetPlugin)
V = TypeVar("V")


def discover(group: str, kind: type[P], taken: set[str], variant: Callable[[P], V]) -> tuple[list[V], dict[str, str]]:
    """The spec variant (``variant(plugin)``) of every plugin registered under ``group``, and the
    entry points that failed to load: (variants, entry-point name -> why).

    A plugin loads when its entry point imports, names a ``kind`` instance whose name is not in
    ``taken`` (the built-ins' names; each loaded plugin's name is added), its params have a JSON
    schema (the catalog serves it) and its variant builds. Any exception from third-party code
    is recorded, never raised: the spec, and so the API, must still import.
    """
    loaded: list[V] = []
    failed: dict[str, str] = {}
    for entry in entry_points(group=group):
        try:
            plugin = _load(entry, kind, taken)
            loaded.append(variant(plugin))
        except Exception as exc:  # any failure of third-party code: record it, keep importing
            failed[entry.name] = f"the plugin failed to load ({entry.value}): {type(exc).__name__}: {exc}"
            log.warning("%s plugin %r: %s", group, entry.name, failed[entry.name])
            continue
        taken.add(plugin.name)
    return loaded, failed


def _load(entry: EntryPoint, kind: type[P], taken: set[str]) -> P:
    plugin = entry.load()
    if not isinstance(plugin, kind):
        raise TypeError(f"it names a {type(plugin).__name__}, not an optim_engine.plugins.{kind.__name__}")
    if plugin.name in taken:
        raise ValueError(f"its name {plugin.name!r} clashes with a built-in or another plugin")
    plugin.params_model.model_json_schema()  # raises for params the catalog could not describe
    return plugin
