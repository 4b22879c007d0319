"""What a spec would cost a worker, estimated from the spec and its dataset's shape, torch-free.

Per-field caps (width, n_samples, epochs) do not bound a product: an MLP of depth 64 and width
16384 passes both and is 17 G parameters. ``estimate`` counts what the engine would build (the
same layers as ``optim_engine._models``; a test holds the counts to torch's), and
``cost_problems`` holds each quantity to a server's bound, naming the field that drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from optim_engine.spec.datasets import (
    CsvDataset,
    DatasetInfo,
    NpzDataset,
    QuadraticDataset,
    SurfaceDataset,
    SyntheticClassificationDataset,
    SyntheticRegressionDataset,
    VisionDataset,
)
from optim_engine.spec.errors import FieldProblem
from optim_engine.spec.job import JobSpec
from optim_engine.spec.losses import BCEWithLogitsLoss, output_size
from optim_engine.spec.models import CNNModel, MLPModel, PluginModel, PointModel, plugin_parameter_count

FLOAT_BYTES = 4
UNKNOWN_OPTIMIZER_STATE = 4
"""State tensors assumed for an optimizer the table does not know (a plugin): Prodigy's and Adan's
four, the most any known one keeps besides L-BFGS."""

# Parameter-sized tensors each optimizer keeps per parameter, from its params; conservative where
# torch keeps less (Adafactor factors a matrix's second moment into a row and a column).
_STATE: dict[str, Callable[[Any], int]] = {
    "sgd": lambda p: int(p.momentum > 0),
    "adam": lambda p: 2 + int(p.amsgrad),
    "adamw": lambda p: 2 + int(p.amsgrad),
    "adamax": lambda _: 2,
    "nadam": lambda _: 2,
    "radam": lambda _: 2,
    "rmsprop": lambda p: 1 + int(p.momentum > 0) + int(p.centered),
    "adagrad": lambda _: 1,
    "adadelta": lambda _: 2,
    "asgd": lambda _: 1,
    "rprop": lambda _: 2,
    # The search direction, the last flat gradient and history_size pairs of flat vectors.
    "lbfgs": lambda p: 2 + 2 * p.history_size,
    "adafactor": lambda _: 2,
    "lion": lambda _: 1,
    "lamb": lambda _: 2,
    "prodigy": lambda _: 4,
    "adan": lambda _: 4,
    "adabelief": lambda p: 2 + int(p.ams_bound),
    "madgrad": lambda _: 3,
}


@dataclass(frozen=True)
class Cost:
    """What one run of a spec allocates and computes."""

    parameters: int
    optimizer_state: int  # floats: parameters x the optimizer's state tensors per parameter
    dataset_bytes: int  # the train and validation tensors: samples x (features + targets)
    outputs: int  # the model's outputs: classes, targets, or 1 for bce_with_logits
    steps: int  # optimizer steps: epochs x ceil(train samples / batch_size); a range test's steps

    @property
    def model_bytes(self) -> int:
        """fp32 bytes of the parameters, their gradients and the optimizer state."""
        return FLOAT_BYTES * (2 * self.parameters + self.optimizer_state)


class CostLimits(NamedTuple):
    """A server's bounds on a ``Cost``."""

    max_parameters: int
    max_model_bytes: int
    max_dataset_bytes: int
    max_outputs: int
    max_steps: int


def optimizer_state_per_parameter(optimizer: Any) -> int:
    """Parameter-sized state tensors ``optimizer`` keeps (0 for plain SGD, 2 for Adam, ...)."""
    state = _STATE.get(optimizer.name)
    return state(optimizer.params) if state is not None else UNKNOWN_OPTIMIZER_STATE


def parameter_count(spec: JobSpec, info: DatasetInfo) -> int:
    """Parameters of the model the engine builds for ``spec`` on a dataset of shape ``info``."""
    n_in, n_out = info.n_features, output_size(spec.loss, info)
    model = spec.model
    if isinstance(model, PointModel):
        return 2
    if isinstance(model, MLPModel):
        p, total, width_in = model.params, 0, n_in
        for _layer in range(p.depth):
            total += width_in * p.width + p.width
            width_in = p.width
        return total + width_in * n_out + n_out
    if isinstance(model, CNNModel):
        return sum(_cnn_counts(model.params, info, n_out))
    if isinstance(model, PluginModel):
        return plugin_parameter_count(model, info, n_out)
    return n_in * n_out + (n_out if model.params.bias else 0)


def _cnn_counts(params: Any, info: DatasetInfo, n_out: int) -> tuple[int, int]:
    """A CNN's parameters as (conv blocks, dense head): conv, 2x2 pool while the image allows,
    then flatten -> hidden -> outputs (``optim_engine._models._cnn``)."""
    assert info.image_shape is not None  # validation puts a cnn on image datasets only
    channels, height, width = info.image_shape
    conv = 0
    for out_channels in params.channels:
        conv += channels * out_channels * params.kernel_size**2 + out_channels
        if min(height, width) >= 2:
            height, width = height // 2, width // 2
        channels = out_channels
    dense = channels * height * width * params.hidden + params.hidden + params.hidden * n_out + n_out
    return conv, dense


def train_samples(spec: JobSpec, info: DatasetInfo) -> int:
    """Samples in the training split (``optim_engine._datasets._split``)."""
    dataset = spec.dataset
    if isinstance(dataset, SurfaceDataset | QuadraticDataset):  # no data: an epoch's steps
        return info.n_samples
    if isinstance(dataset, VisionDataset) and dataset.params.use_test_split:
        return info.n_samples
    return info.n_samples - int(info.n_samples * dataset.val_fraction)


def step_count(spec: JobSpec, info: DatasetInfo) -> int:
    """Optimizer steps of a run: a range test's own count, a 2-D function's epochs x
    steps_per_epoch, else epochs x batches per epoch."""
    if spec.lr_range_test is not None:
        return spec.lr_range_test.steps
    if isinstance(spec.dataset, SurfaceDataset | QuadraticDataset):
        return spec.epochs * spec.dataset.params.steps_per_epoch
    return spec.epochs * math.ceil(train_samples(spec, info) / spec.batch_size)


def estimate(spec: JobSpec, info: DatasetInfo) -> Cost:
    """The cost of one run of ``spec`` on a dataset of shape ``info`` (``dataset_info``'s)."""
    parameters = parameter_count(spec, info)
    if info.task == "function":  # two coordinates and no data
        state = parameters * optimizer_state_per_parameter(spec.optimizer)
        return Cost(
            parameters=parameters, optimizer_state=state, dataset_bytes=0, outputs=1, steps=step_count(spec, info)
        )
    outputs = output_size(spec.loss, info)
    if info.task == "regression":
        target_bytes = FLOAT_BYTES * info.n_outputs
    else:  # int64 class indices, or one float for bce_with_logits
        target_bytes = FLOAT_BYTES if isinstance(spec.loss, BCEWithLogitsLoss) else 8
    return Cost(
        parameters=parameters,
        optimizer_state=parameters * optimizer_state_per_parameter(spec.optimizer),
        dataset_bytes=info.n_samples * (FLOAT_BYTES * info.n_features + target_bytes),
        outputs=outputs,
        steps=step_count(spec, info),
    )


def cost_problems(spec: JobSpec, info: DatasetInfo, limits: CostLimits) -> list[FieldProblem]:
    """Each bound in ``limits`` that ``spec``'s cost exceeds, located at the field that drives it."""
    cost = estimate(spec, info)
    problems: list[FieldProblem] = []
    if cost.parameters > limits.max_parameters:
        message = f"{_model_text(spec, info)} has {cost.parameters:,} parameters"
        problems.append((_parameter_field(spec, info), _over(message, limits.max_parameters, "MAX_PARAMETERS")))
    elif cost.model_bytes > limits.max_model_bytes:
        message = (
            f"{cost.parameters:,} parameters with {spec.optimizer.name}'s state take {cost.model_bytes:,} bytes "
            "(weights, gradients and optimizer state)"
        )
        where = (
            ("optimizer", "params", "history_size") if spec.optimizer.name == "lbfgs" else _parameter_field(spec, info)
        )
        problems.append((where, _over(message, limits.max_model_bytes, "MAX_MODEL_BYTES")))
    if cost.dataset_bytes > limits.max_dataset_bytes:
        message = f"{info.n_samples:,} samples x {info.n_features:,} features take {cost.dataset_bytes:,} bytes"
        problems.append((_dataset_field(spec.dataset), _over(message, limits.max_dataset_bytes, "MAX_DATASET_BYTES")))
    if cost.outputs > limits.max_outputs:
        message = f"the dataset needs {cost.outputs:,} outputs"
        problems.append((_outputs_field(spec.dataset), _over(message, limits.max_outputs, "MAX_OUTPUTS")))
    if cost.steps > limits.max_steps:
        where, message = _steps_text(spec, cost.steps)
        problems.append((where, _over(message, limits.max_steps, "MAX_STEPS")))
    return problems


def _steps_text(spec: JobSpec, total: int) -> tuple[tuple[str, ...], str]:
    """The field that drives a run's step count, and how the count comes about."""
    if spec.lr_range_test is not None:
        return ("lr_range_test", "steps"), f"the range test takes {total:,} steps"
    per_epoch = total // spec.epochs
    if isinstance(spec.dataset, SurfaceDataset | QuadraticDataset):
        message = f"{spec.epochs:,} epochs x {per_epoch:,} steps per epoch are {total:,} steps"
        where = ("dataset", "params", "steps_per_epoch") if per_epoch >= spec.epochs else ("epochs",)
        return where, message
    message = f"{spec.epochs:,} epochs x {per_epoch:,} batches of {spec.batch_size} are {total:,} steps"
    return (("batch_size",) if per_epoch >= spec.epochs else ("epochs",)), message


def _over(message: str, cap: int, setting: str) -> str:
    return f"{message}, over this server's cap of {cap:,} (OPTIMLAB_{setting})"


def _model_text(spec: JobSpec, info: DatasetInfo) -> str:
    model, n_out = spec.model, output_size(spec.loss, info)
    if isinstance(model, MLPModel):
        shape = f"depth {model.params.depth} x width {model.params.width}"
    elif isinstance(model, CNNModel):
        shape = f"channels {model.params.channels}, hidden {model.params.hidden}"
    elif isinstance(model, PluginModel):
        shape = "a plugin's model"
    else:
        shape = "one layer"
    return f"{model.name} ({shape}, {info.n_features:,} in, {n_out:,} out)"


def _parameter_field(spec: JobSpec, info: DatasetInfo) -> tuple[str, ...]:
    """The knob that grows a model's parameters fastest: an MLP's width, a CNN's dense head or
    its channels (whichever holds more), else the dataset's features (features x outputs)."""
    model = spec.model
    if isinstance(model, MLPModel) and model.params.depth > 0:
        return ("model", "params", "width")
    if isinstance(model, CNNModel):
        conv, dense = _cnn_counts(model.params, info, output_size(spec.loss, info))
        return ("model", "params", "hidden" if dense >= conv else "channels")
    if isinstance(model, PluginModel):
        return ("model", "params")
    return _dataset_field(spec.dataset)


def _dataset_field(dataset: Any) -> tuple[str, ...]:
    if isinstance(dataset, SyntheticRegressionDataset) and dataset.params.n_targets > dataset.params.n_features:
        return ("dataset", "params", "n_targets")
    if isinstance(dataset, SyntheticRegressionDataset | SyntheticClassificationDataset):
        return ("dataset", "params", "n_features")
    if isinstance(dataset, NpzDataset | CsvDataset):
        return ("dataset", "params", "path")
    if isinstance(dataset, VisionDataset):
        return ("dataset", "params", "limit")
    return ("dataset",)


def _outputs_field(dataset: Any) -> tuple[str, ...]:
    if isinstance(dataset, SyntheticClassificationDataset):
        return ("dataset", "params", "n_classes")
    if isinstance(dataset, SyntheticRegressionDataset):
        return ("dataset", "params", "n_targets")
    if isinstance(dataset, NpzDataset):
        return ("dataset", "params", "y_key")
    if isinstance(dataset, CsvDataset):
        return ("dataset", "params", "target")
    return ("dataset",)
