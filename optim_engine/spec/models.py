"""Model variants: linear, logistic regression, MLP, a small CNN, the point a 2-D function moves,
and installed plugins' models (entry-point group ``optimlab.models``, ``optim_engine.plugins``).

A plugin that fails to load never breaks an import: it is recorded in ``MODEL_PLUGIN_ERRORS``
and every spec that names it is rejected at ``model`` with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, Field, create_model

from optim_engine.plugins import ModelPlugin, discover
from optim_engine.spec._base import StrictModel, Width, as_tuple, reject_known, variant_names

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]


class _ModelBase(StrictModel):
    in_features: Width | None = Field(default=None, description="None: taken from the dataset.")
    out_features: Width | None = Field(default=None, description="None: taken from the dataset and loss.")


class LinearParams(_ModelBase):
    bias: bool = True


class LogisticRegressionParams(_ModelBase):
    bias: bool = True


class MLPParams(_ModelBase):
    depth: Annotated[int, Field(ge=0, le=64, description="Number of hidden layers.")] = 2
    width: Width = 128
    activation: Activation = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class CNNParams(StrictModel):
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of each conv block (conv, activation, 2x2 max-pool while the image allows).",
    )
    kernel_size: Annotated[int, Field(ge=1, le=11)] = 3
    hidden: Width = 128
    activation: Activation = "relu"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


Coordinate = Annotated[float, Field(ge=-1e4, le=1e4, allow_inf_nan=False)]


class PointParams(StrictModel):
    start: Annotated[tuple[Coordinate, Coordinate], BeforeValidator(as_tuple)] | None = Field(
        default=None, description="Where the path starts, [x, y]; None: the function's standard start."
    )


class LinearModel(StrictModel):
    """A single affine layer: nn.Linear(in_features, out_features)."""

    name: Literal["linear"]
    params: LinearParams = Field(default_factory=LinearParams)


class LogisticRegressionModel(StrictModel):
    """A single affine layer whose outputs are class logits."""

    name: Literal["logistic_regression"]
    params: LogisticRegressionParams = Field(default_factory=LogisticRegressionParams)


class MLPModel(StrictModel):
    """A multilayer perceptron: depth hidden layers of the given width."""

    name: Literal["mlp"]
    params: MLPParams = Field(default_factory=MLPParams)


class CNNModel(StrictModel):
    """A small convolutional net for datasets with an image shape (digits, MNIST, CIFAR-10)."""

    name: Literal["cnn"]
    params: CNNParams = Field(default_factory=CNNParams)


class PointModel(StrictModel):
    """Two coordinates [x, y], the parameter a 2-D function dataset's optimizer moves.

    Runs on the CPU in float64 whatever ``device`` says: two numbers gain nothing from an
    accelerator, and float64 keeps the path on the contour the API draws (numpy's float64).
    """

    name: Literal["point"]
    params: PointParams = Field(default_factory=PointParams)


V = TypeVar("V", bound=StrictModel)


class PluginModel(StrictModel):
    """The base of every plugin model variant: ``name`` is the plugin's, ``params`` its
    ``params_model``; ``plugin`` is the ``ModelPlugin`` it came from."""

    if TYPE_CHECKING:  # fields every variant adds (see _plugin_variant)
        name: str
        params: Any  # the plugin's params_model

    plugin: ClassVar[ModelPlugin]


def params_field(params_model: type[BaseModel]) -> Any:
    """A variant's ``params``: defaulted when the plugin's params all have defaults, else required."""
    if any(field.is_required() for field in params_model.model_fields.values()):
        return Field()
    return Field(default_factory=params_model)


def plugin_variant(plugin: Any, base: type[V], kind: str) -> type[V]:
    """The spec variant of a model or dataset plugin: ``base`` with the plugin's name as its tag
    and its params model as ``params``; the plugin rides along as a class attribute."""
    title = "".join(part.title() for part in plugin.name.split("_"))
    variant = create_model(
        f"{title}Plugin{kind.title()}",
        __base__=base,
        __doc__=plugin.description or f"The {plugin.name} {kind} of an installed plugin.",
        name=(Literal[plugin.name], Field(description="Registry key.")),  # type: ignore
        params=(plugin.params_model, params_field(plugin.params_model)),
    )
    variant.plugin = plugin  # type: ignore[attr-defined]
    return variant


def _plugin_variant(plugin: ModelPlugin) -> type[PluginModel]:
    return plugin_variant(plugin, PluginModel, "model")


MODEL_PLUGIN_GROUP = "optimlab.models"
_BUILT_IN: list[type[StrictModel]] = [LinearModel, LogisticRegressionModel, MLPModel, CNNModel, PointModel]
PLUGIN_MODELS, MODEL_PLUGIN_ERRORS = discover(
    MODEL_PLUGIN_GROUP, ModelPlugin, {name for v in _BUILT_IN for name in variant_names(v)}, _plugin_variant
)
"""The variants of the plugins that loaded, and the entry points that failed (name -> why)."""
_USABLE = {name for v in [*_BUILT_IN, *PLUGIN_MODELS] for name in variant_names(v)}
# A failed plugin whose entry point is named like a usable model does not shadow it.
_UNUSABLE = {name: reason for name, reason in MODEL_PLUGIN_ERRORS.items() if name not in _USABLE}

if TYPE_CHECKING:
    ModelSpec = LinearModel | LogisticRegressionModel | MLPModel | CNNModel | PointModel | PluginModel
else:
    ModelSpec = Annotated[
        Union[tuple(_BUILT_IN + PLUGIN_MODELS)],  # noqa: UP007
        Field(discriminator="name"),
        reject_known(_UNUSABLE, "model"),
    ]


def plugin_model_problems(model: PluginModel, info: Any) -> list[tuple[tuple[str, ...], str]]:
    """What a plugin model declares it needs of the dataset (``info``: its ``DatasetInfo``, or
    None while the host has not read it)."""
    if model.plugin.needs_image and info is not None and info.image_shape is None:
        return [(("model",), f"{model.name} needs an image dataset (one with an image shape, e.g. digits, mnist)")]
    return []


def plugin_parameter_count(model: PluginModel, info: Any, n_outputs: int) -> int:
    """The plugin's own count of its model's parameters; 0 when it declares none (or its count
    fails): then the server's parameter caps cannot hold it."""
    count = model.plugin.parameter_count
    if count is None:
        return 0
    try:
        return max(int(count(model.params, info, n_outputs)), 0)
    except Exception:  # third-party code: an unknown count, not a 500
        return 0
