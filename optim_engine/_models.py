"""Model and loss registries: spec in, ``nn.Module`` out (a 2-D function's point and value too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optim_engine import _seeding
from optim_engine._optim import resolve
from optim_engine.spec import CNNParams, DatasetInfo, JobSpec, MLPParams, PointModel, PointParams, output_size, surface
from optim_engine.spec.host import dataset_info, resolve_root
from optim_engine.spec.models import PluginModel

POINT_DTYPE = torch.float64

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def _linear(params: Any, n_in: int, n_out: int, _: DatasetInfo) -> nn.Module:
    return nn.Linear(n_in, n_out, bias=params.bias)


def _mlp(params: MLPParams, n_in: int, n_out: int, _: DatasetInfo) -> nn.Module:
    layers: list[nn.Module] = []
    width_in = n_in
    for _layer in range(params.depth):
        layers += [nn.Linear(width_in, params.width), _ACTIVATIONS[params.activation]()]
        if params.dropout > 0:
            layers.append(nn.Dropout(params.dropout))
        width_in = params.width
    layers.append(nn.Linear(width_in, n_out))
    return nn.Sequential(*layers)


def _cnn(params: CNNParams, _: int, n_out: int, info: DatasetInfo) -> nn.Module:
    assert info.image_shape is not None  # the spec validator guarantees an image dataset
    channels, height, width = info.image_shape
    layers: list[nn.Module] = [nn.Unflatten(1, info.image_shape)]
    for out_channels in params.channels:
        layers += [
            nn.Conv2d(channels, out_channels, params.kernel_size, padding=params.kernel_size // 2),
            _ACTIVATIONS[params.activation](),
        ]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    layers += [nn.Flatten(), nn.Linear(channels * height * width, params.hidden), _ACTIVATIONS[params.activation]()]
    if params.dropout > 0:
        layers.append(nn.Dropout(params.dropout))
    layers.append(nn.Linear(params.hidden, n_out))
    return nn.Sequential(*layers)


class Point(nn.Module):
    """The two coordinates a 2-D function run moves; ``forward`` returns them as one tensor."""

    def __init__(self, start: tuple[float, float]) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor(start, dtype=POINT_DTYPE))

    def forward(self) -> torch.Tensor:
        return self.xy


class SurfaceValue(nn.Module):
    """The ``value`` loss: a 2-D function evaluated at a point's coordinates."""

    def __init__(self, dataset: Any) -> None:
        super().__init__()
        self.surface = surface(dataset.name, getattr(dataset.params, "condition", None))

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.surface.value(xy[0], xy[1], torch)  # type: ignore[no-any-return]


def _point(params: PointParams, _: int, __: int, ___: DatasetInfo) -> nn.Module:
    assert params.start is not None  # build_model fills in the function's standard start
    return Point(params.start)


MODELS: dict[str, Callable[[Any, int, int, DatasetInfo], nn.Module]] = {
    "linear": _linear,
    "logistic_regression": _linear,
    "mlp": _mlp,
    "cnn": _cnn,
    "point": _point,
}


def _plugin_builder(model: PluginModel) -> Callable[[Any, int, int, DatasetInfo], nn.Module]:
    """A plugin's ``build(params, info, n_outputs)`` (``ModelPlugin.target``), imported here, on
    the worker, and held to returning a module."""
    build = resolve(model.plugin.target)

    def builder(params: Any, _: int, n_out: int, info: DatasetInfo) -> nn.Module:
        module = build(params, info, n_out)
        if not isinstance(module, nn.Module):
            raise TypeError(f"the {model.name} plugin's {model.plugin.target} returned a {type(module).__name__}")
        return module

    return builder


def build_model(spec: JobSpec | dict[str, Any], *, data_root: Path | None = None) -> nn.Module:
    """The exact initial model of a run, on the CPU: same seed, same weights, whatever the optimizer."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    info = dataset_info(spec.dataset, resolve_root(data_root))
    builder = _plugin_builder(spec.model) if isinstance(spec.model, PluginModel) else MODELS[spec.model.name]
    n_out = output_size(spec.loss, info)
    params: Any = spec.model.params
    if isinstance(spec.model, PointModel) and params.start is None:
        params = params.model_copy(update={"start": surface(spec.dataset.name).start})
    return _seeding.init_weights(spec.seed, lambda: builder(params, info.n_features, n_out, info))


def build_loss(spec: JobSpec) -> nn.Module:
    """The loss module (mean reduction) for a spec."""
    loss: Any = spec.loss
    builders: dict[str, Callable[[], nn.Module]] = {
        "mse": nn.MSELoss,
        "l1": nn.L1Loss,
        "smooth_l1": lambda: nn.SmoothL1Loss(beta=loss.beta),
        "huber": lambda: nn.HuberLoss(delta=loss.delta),
        "cross_entropy": lambda: nn.CrossEntropyLoss(label_smoothing=loss.label_smoothing),
        "bce_with_logits": nn.BCEWithLogitsLoss,
        "value": lambda: SurfaceValue(spec.dataset),
    }
    return builders[loss.name]()


LOSSES = ("mse", "l1", "smooth_l1", "huber", "cross_entropy", "bce_with_logits", "value")


def count_correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch: argmax of logits, or one logit's sign for binary targets."""
    if target.dtype == torch.long:
        return (output.argmax(dim=1) == target).sum()
    return ((output > 0).to(target.dtype) == target).sum()
