"""Learning-rate scheduler variants: torch.optim.lr_scheduler's, params mirroring each class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, Field, create_model, field_validator

from optim_engine.spec._base import NonNegative, Positive, StrictModel, reject_known


class _SchedulerBase(StrictModel):
    if TYPE_CHECKING:  # fields every variant adds (see _scheduler)
        name: str
        params: BaseModel

    target: ClassVar[str]
    interval: Literal["epoch", "step"] = Field(
        default="epoch", description="Step the scheduler after every epoch or after every optimizer step."
    )
    epochs: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="In a chain, how many epochs this scheduler runs before the next takes over.",
    )


class StepLRParams(StrictModel):
    step_size: Annotated[int, Field(ge=1)]
    gamma: Positive = 0.1


class MultiStepLRParams(StrictModel):
    milestones: list[Annotated[int, Field(ge=1)]]
    gamma: Positive = 0.1

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        if milestones != sorted(set(milestones)):
            raise ValueError("milestones must be strictly increasing")
        return milestones


class ConstantLRParams(StrictModel):
    factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0 / 3
    total_iters: Annotated[int, Field(ge=0)] = 5


class LinearLRParams(StrictModel):
    start_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0 / 3
    end_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    total_iters: Annotated[int, Field(ge=1)] = 5


class ExponentialLRParams(StrictModel):
    gamma: Positive


class PolynomialLRParams(StrictModel):
    total_iters: Annotated[int, Field(ge=1)] = 5
    power: NonNegative = 1.0


class CosineAnnealingLRParams(StrictModel):
    T_max: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="None: the length of this scheduler's span (whole run, or its epochs in a chain)."
    )
    eta_min: NonNegative = 0.0


class CosineAnnealingWarmRestartsParams(StrictModel):
    T_0: Annotated[int, Field(ge=1)]
    T_mult: Annotated[int, Field(ge=1)] = 1
    eta_min: NonNegative = 0.0


class CyclicLRParams(StrictModel):
    base_lr: Positive
    max_lr: Positive
    step_size_up: Annotated[int, Field(ge=1)] = 2000
    step_size_down: Annotated[int, Field(ge=1)] | None = None
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: Positive = 1.0
    scale_mode: Literal["cycle", "iterations"] = "cycle"
    cycle_momentum: bool = True
    base_momentum: NonNegative = 0.8
    max_momentum: NonNegative = 0.9


class OneCycleLRParams(StrictModel):
    max_lr: Positive
    total_steps: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="None: epochs x steps per epoch (or this scheduler's span in a chain)."
    )
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool = True
    base_momentum: NonNegative = 0.85
    max_momentum: NonNegative = 0.95
    div_factor: Positive = 25.0
    final_div_factor: Positive = 1e4
    three_phase: bool = False


class ReduceLROnPlateauParams(StrictModel):
    mode: Literal["min", "max"] = "min"
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    threshold: NonNegative = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: NonNegative = 0.0
    eps: NonNegative = 1e-8


def _scheduler(
    name: str, target: str, params_model: type[BaseModel], doc: str, interval: str = "epoch", required: bool = False
) -> type[_SchedulerBase]:
    params_field = (params_model, ...) if required else (params_model, Field(default_factory=params_model))
    model = create_model(
        f"{params_model.__name__.removesuffix('Params')}Scheduler",
        __base__=_SchedulerBase,
        __doc__=doc,
        name=(Literal[name], Field(description="Registry key.")),  # type: ignore
        params=params_field,
        interval=(Literal["epoch", "step"], interval),  # type: ignore
    )
    model.target = target
    return model


_LRS = "torch.optim.lr_scheduler"
SCHEDULER_VARIANTS: list[type[_SchedulerBase]] = [
    _scheduler(
        "step_lr", f"{_LRS}:StepLR", StepLRParams, "Multiply the lr by gamma every step_size epochs.", required=True
    ),
    _scheduler(
        "multi_step_lr",
        f"{_LRS}:MultiStepLR",
        MultiStepLRParams,
        "Multiply the lr by gamma at each milestone.",
        required=True,
    ),
    _scheduler(
        "constant_lr", f"{_LRS}:ConstantLR", ConstantLRParams, "A constant factor for total_iters, then the base lr."
    ),
    _scheduler("linear_lr", f"{_LRS}:LinearLR", LinearLRParams, "Linear ramp of the lr factor (warmup)."),
    _scheduler(
        "exponential_lr",
        f"{_LRS}:ExponentialLR",
        ExponentialLRParams,
        "Multiply the lr by gamma every epoch.",
        required=True,
    ),
    _scheduler(
        "polynomial_lr", f"{_LRS}:PolynomialLR", PolynomialLRParams, "Polynomial decay to zero over total_iters."
    ),
    _scheduler(
        "cosine_annealing_lr",
        f"{_LRS}:CosineAnnealingLR",
        CosineAnnealingLRParams,
        "Cosine decay to eta_min over T_max.",
    ),
    _scheduler(
        "cosine_annealing_warm_restarts",
        f"{_LRS}:CosineAnnealingWarmRestarts",
        CosineAnnealingWarmRestartsParams,
        "SGDR: cosine decay with warm restarts.",
        required=True,
    ),
    _scheduler(
        "cyclic_lr", f"{_LRS}:CyclicLR", CyclicLRParams, "Cyclical learning rates (per step).", "step", required=True
    ),
    _scheduler(
        "one_cycle_lr", f"{_LRS}:OneCycleLR", OneCycleLRParams, "The 1cycle policy (per step).", "step", required=True
    ),
    _scheduler(
        "reduce_lr_on_plateau",
        f"{_LRS}:ReduceLROnPlateau",
        ReduceLROnPlateauParams,
        "Cut the lr when the validation loss stops improving.",
    ),
]

REJECTED_SCHEDULERS: dict[str, str] = {
    "lambda_lr": "LambdaLR takes a Python callable, which a spec cannot carry; use a built-in schedule.",
    "multiplicative_lr": "MultiplicativeLR takes a Python callable, which a spec cannot carry.",
    "sequential_lr": "give the scheduler as a list instead: each entry runs for its `epochs`, then the next.",
    "chained_scheduler": "not offered: a list of schedulers runs them one after another (SequentialLR).",
}

if TYPE_CHECKING:
    SchedulerSpec = _SchedulerBase
else:
    SchedulerSpec = Annotated[
        Union[tuple(SCHEDULER_VARIANTS)],  # noqa: UP007
        Field(discriminator="name"),
        reject_known(REJECTED_SCHEDULERS, "scheduler"),
    ]
