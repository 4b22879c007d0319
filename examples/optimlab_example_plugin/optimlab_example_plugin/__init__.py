"""optimlab's plugin objects for a small ResNet-style CNN and an ``.npz`` file of your own.

This module is what the entry points name, and the API imports it to validate specs and serve
the catalog: it imports no torch. The torch side (``build``, ``load``) lives in
``optimlab_example_plugin.torch_side``, named by ``target`` strings and imported only by the
worker that trains.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optim_engine.plugins import DataFileError, DatasetPlugin, DatasetShape, ModelPlugin, data_file, inspect_npz


class SmallResNetParams(BaseModel):
    """The CNN's knobs: every residual block keeps ``width`` channels at the image's size."""

    model_config = ConfigDict(extra="forbid", strict=True)

    width: Annotated[int, Field(ge=1, le=256, description="Channels of the stem and of every block.")] = 16
    blocks: Annotated[int, Field(ge=1, le=8, description="Residual blocks (two 3x3 convs and a skip each).")] = 2


def parameter_count(params: SmallResNetParams, info: Any, n_outputs: int) -> int:
    """The parameters ``torch_side.build`` creates, counted without torch (the server's caps)."""
    channels = info.image_shape[0]  # needs_image: optimlab puts this model on image datasets only
    conv = 9 * params.width
    stem = channels * conv + params.width
    block = 2 * (params.width * conv + params.width)
    return stem + params.blocks * block + params.width * n_outputs + n_outputs


class NpzFileParams(BaseModel):
    """Where the file is and how to read it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str = Field(description="The .npz file, relative to the data root (OPTIMLAB_DATA_DIR).")
    x_key: str = Field(default="x", description="The features: shape (n, features), (n, H, W) or (n, C, H, W).")
    y_key: str = Field(default="y", description="The targets: class indices 0..K-1, or regression values.")
    task: Literal["classification", "regression"] = "classification"
    standardize: bool = Field(default=False, description="Scale features with the training split's mean and std.")


def describe(params: NpzFileParams, root: Path) -> DatasetShape:
    """The file's shape from its arrays' headers (the features are never inflated here)."""
    shape = inspect_npz(data_file(params.path, root), params.x_key, params.y_key)
    x, y = shape.x_shape, shape.y_shape
    if not shape.numeric:
        raise DataFileError("features and targets must be numeric", param="x_key")
    if not 2 <= len(x) <= 4 or not y or y[0] != x[0]:
        raise DataFileError(f"x of shape {x} and y of shape {y}: want (n, ...) of 1-3 dims, n rows in each")
    targets = shape.targets
    if params.task == "regression":
        n_outputs = math.prod(y[1:])
    elif targets is None or len(y) != 1 or not targets.integral or targets.low < 0:
        raise DataFileError("classification targets must be a 1-D array of class indices 0..K-1", param="y_key")
    else:
        n_outputs = max(int(targets.high) + 1, 2)
    return DatasetShape(n_samples=x[0], input_shape=x[1:], n_outputs=n_outputs)


model = ModelPlugin(
    name="small_resnet",
    target="optimlab_example_plugin.torch_side:build",
    params_model=SmallResNetParams,
    description="A small ResNet-style CNN: a 3x3 stem, residual blocks, global average pooling.",
    needs_image=True,
    parameter_count=parameter_count,
)

dataset = DatasetPlugin(
    name="my_npz",
    target="optimlab_example_plugin.torch_side:load",
    params_model=NpzFileParams,
    describe=describe,
    description="Arrays x and y from an .npz file of yours under the data root.",
)
