"""Loss variants, each naming the tasks it fits; a bare name is shorthand for ``{"name": ...}``."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BeforeValidator, Field

from optim_engine.spec._base import NonNegative, Positive, StrictModel
from optim_engine.spec.datasets import DatasetInfo


class _LossBase(StrictModel):
    tasks: ClassVar[tuple[str, ...]] = ("regression",)


class MSELoss(_LossBase):
    """Mean squared error."""

    name: Literal["mse"]


class L1Loss(_LossBase):
    """Mean absolute error."""

    name: Literal["l1"]


class SmoothL1Loss(_LossBase):
    """Smooth L1 (quadratic below beta)."""

    name: Literal["smooth_l1"]
    beta: NonNegative = 1.0


class HuberLoss(_LossBase):
    """Huber loss (quadratic below delta)."""

    name: Literal["huber"]
    delta: Positive = 1.0


class CrossEntropyLoss(_LossBase):
    """Softmax cross-entropy on class logits."""

    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    name: Literal["cross_entropy"]
    label_smoothing: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class BCEWithLogitsLoss(_LossBase):
    """Binary cross-entropy on one logit; binary classification only."""

    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    name: Literal["bce_with_logits"]


class ValueLoss(_LossBase):
    """The 2-D function's value at the point: the loss of every 2-D function dataset."""

    tasks: ClassVar[tuple[str, ...]] = ("function",)
    name: Literal["value"]


def _loss_shorthand(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


LossSpec = Annotated[
    Union[MSELoss, L1Loss, SmoothL1Loss, HuberLoss, CrossEntropyLoss, BCEWithLogitsLoss, ValueLoss],  # noqa: UP007
    Field(discriminator="name"),
    BeforeValidator(_loss_shorthand),
]


def output_size(loss: Any, data: DatasetInfo) -> int:
    """How many outputs the model needs for this loss on this dataset."""
    if isinstance(loss, BCEWithLogitsLoss):
        return 1
    return data.n_outputs
