"""Model variants: linear, logistic regression, MLP, a small CNN, and the point a 2-D function moves."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field

from optim_engine.spec._base import StrictModel, Width, as_tuple

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


ModelSpec = Annotated[
    Union[LinearModel, LogisticRegressionModel, MLPModel, CNNModel, PointModel],  # noqa: UP007
    Field(discriminator="name"),
]
