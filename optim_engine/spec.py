"""The job spec: the one contract between the API, the workers and the engine.

Pure pydantic, no torch, so the API validates with exactly the schema the workers train from.
Models, datasets, losses, optimizers and schedulers are discriminated unions on ``name``; each
variant's params mirror the torch constructor they build (a test holds them to the installed
torch). Cross-field rules (model vs dataset shape, loss vs task, chained schedulers) run here
too: a spec that validates is a spec a worker can train.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
import typing
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from optim_engine import _data_files
from optim_engine.plugins import OptimizerPlugin
from optim_engine.settings import get_settings


def variant_names(variant: type[BaseModel]) -> tuple[str, ...]:
    """The registry keys a union variant answers to (the values of its ``name`` Literal)."""
    annotation: Any = variant.model_fields["name"].annotation
    return tuple(str(name) for name in typing.get_args(annotation))


class _Strict(BaseModel):
    """No unknown keys, no silent coercion of strings to numbers or booleans."""

    # inf is a legitimate default (Prodigy's growth_rate); keep it through JSON as Infinity, not null.
    model_config = ConfigDict(extra="forbid", strict=True, ser_json_inf_nan="constants")


def _as_tuple(value: Any) -> Any:
    # JSON and YAML have no tuples; accept a list where torch takes a tuple.
    return tuple(value) if isinstance(value, list) else value


def _as_list(value: Any) -> Any:
    # One scheduler may be given bare; it is stored as a chain of one.
    return [value] if isinstance(value, dict) else value


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Betas = Annotated[tuple[Beta, Beta], BeforeValidator(_as_tuple)]
NonNegative = Annotated[float, Field(ge=0.0)]
Positive = Annotated[float, Field(gt=0.0)]
LearningRate = Annotated[float, Field(gt=0.0, le=1e4, description="Initial learning rate.")]
Implementation = Annotated[
    bool | None,
    Field(description="None lets the engine pick the fastest implementation for the device."),
]


# --------------------------------------------------------------------------- optimizers


class SGDParams(_Strict):
    momentum: NonNegative = 0.0
    dampening: float = 0.0
    weight_decay: NonNegative = 0.0
    nesterov: bool = False
    maximize: bool = False
    foreach: Implementation = None
    differentiable: bool = False
    fused: Implementation = None

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")
        return self


class _AdamFamily(_Strict):
    betas: Betas = (0.9, 0.999)
    eps: NonNegative = 1e-8
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    maximize: bool = False
    capturable: bool = False
    differentiable: bool = False


class AdamParams(_AdamFamily):
    amsgrad: bool = False
    fused: Implementation = None
    decoupled_weight_decay: bool = False


class AdamWParams(_AdamFamily):
    weight_decay: NonNegative = 0.01
    amsgrad: bool = False
    fused: Implementation = None


class AdamaxParams(_AdamFamily):
    pass


class NAdamParams(_AdamFamily):
    momentum_decay: NonNegative = 0.004
    decoupled_weight_decay: bool = False


class RAdamParams(_AdamFamily):
    decoupled_weight_decay: bool = False


class RMSpropParams(_Strict):
    alpha: NonNegative = 0.99
    eps: NonNegative = 1e-8
    weight_decay: NonNegative = 0.0
    momentum: NonNegative = 0.0
    centered: bool = False
    capturable: bool = False
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False


class AdagradParams(_Strict):
    lr_decay: NonNegative = 0.0
    weight_decay: NonNegative = 0.0
    initial_accumulator_value: NonNegative = 0.0
    eps: NonNegative = 1e-10
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False
    fused: Implementation = None


class AdadeltaParams(_Strict):
    rho: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    eps: NonNegative = 1e-6
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    capturable: bool = False
    maximize: bool = False
    differentiable: bool = False


class ASGDParams(_Strict):
    lambd: NonNegative = 1e-4
    alpha: NonNegative = 0.75
    t0: NonNegative = 1e6
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False
    capturable: bool = False


class RpropParams(_Strict):
    etas: Annotated[tuple[Positive, Positive], BeforeValidator(_as_tuple)] = (0.5, 1.2)
    step_sizes: Annotated[tuple[NonNegative, NonNegative], BeforeValidator(_as_tuple)] = (1e-6, 50.0)
    capturable: bool = False
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False

    @model_validator(mode="after")
    def _eta_order(self) -> RpropParams:
        if not 0.0 < self.etas[0] < 1.0 < self.etas[1]:
            raise ValueError(f"Invalid eta values: {self.etas[0]}, {self.etas[1]} (need 0 < eta- < 1 < eta+)")
        return self


class LBFGSParams(_Strict):
    max_iter: Annotated[int, Field(ge=1, le=1000)] = 20
    max_eval: Annotated[int, Field(ge=1)] | None = None
    tolerance_grad: NonNegative = 1e-7
    tolerance_change: NonNegative = 1e-9
    history_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    line_search_fn: Literal["strong_wolfe"] | None = None


class AdafactorParams(_Strict):
    beta2_decay: Annotated[float, Field(le=0.0)] = -0.8
    eps: Annotated[tuple[NonNegative | None, NonNegative], BeforeValidator(_as_tuple)] = (None, 1e-3)
    d: NonNegative = 1.0
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    maximize: bool = False


class _OptimizerBase(_Strict):
    if TYPE_CHECKING:  # fields every variant adds (see _optimizer)
        name: str
        lr: float
        params: BaseModel

    # Import path of the class this variant builds, ``module:attribute``.
    target: ClassVar[str]
    # The pip extra that provides ``target`` when it is not part of torch.
    extra: ClassVar[str | None] = None

    @property
    def param_keys(self) -> set[str]:
        params: BaseModel = self.params
        return set(type(params).model_fields)


def _optimizer(
    name: str, target: str, params_model: type[BaseModel], default_lr: float, doc: str, extra: str | None = None
) -> type[_OptimizerBase]:
    model = create_model(
        f"{params_model.__name__.removesuffix('Params')}Optimizer",
        __base__=_OptimizerBase,
        __doc__=doc,
        name=(Literal[name], Field(description="Registry key.")),  # type: ignore
        lr=(LearningRate, default_lr),
        params=(params_model, Field(default_factory=params_model)),
    )
    model.target = target
    model.extra = extra
    return model


_TORCH_OPTIMIZERS: list[type[_OptimizerBase]] = [
    _optimizer(
        "sgd", "torch.optim:SGD", SGDParams, 1e-3, "Stochastic gradient descent, with optional (Nesterov) momentum."
    ),
    _optimizer("adam", "torch.optim:Adam", AdamParams, 1e-3, "Adam (Kingma & Ba); amsgrad optional."),
    _optimizer("adamw", "torch.optim:AdamW", AdamWParams, 1e-3, "Adam with decoupled weight decay."),
    _optimizer("adamax", "torch.optim:Adamax", AdamaxParams, 2e-3, "Adam on the infinity norm."),
    _optimizer("nadam", "torch.optim:NAdam", NAdamParams, 2e-3, "Adam with Nesterov momentum."),
    _optimizer("radam", "torch.optim:RAdam", RAdamParams, 1e-3, "Rectified Adam."),
    _optimizer(
        "rmsprop", "torch.optim:RMSprop", RMSpropParams, 1e-2, "RMSprop, optionally centered and with momentum."
    ),
    _optimizer("adagrad", "torch.optim:Adagrad", AdagradParams, 1e-2, "Adagrad."),
    _optimizer("adadelta", "torch.optim:Adadelta", AdadeltaParams, 1.0, "Adadelta."),
    _optimizer("asgd", "torch.optim:ASGD", ASGDParams, 1e-2, "Averaged SGD."),
    _optimizer("rprop", "torch.optim:Rprop", RpropParams, 1e-2, "Resilient backpropagation (sign-based steps)."),
    _optimizer("lbfgs", "torch.optim:LBFGS", LBFGSParams, 1.0, "L-BFGS; the engine supplies the closure it needs."),
    _optimizer("adafactor", "torch.optim:Adafactor", AdafactorParams, 1e-2, "Adafactor (factored second moments)."),
]

# torch.optim classes that no spec can use, and why (the catalog lists them too).
REJECTED_OPTIMIZERS: dict[str, str] = {
    "sparse_adam": (
        "SparseAdam only accepts sparse gradients (nn.Embedding(sparse=True)); every catalog model "
        "has dense gradients, so it would fail on the first step. Use adam or lazy-free adamw."
    ),
    "muon": (
        "Muon only updates 2-D weight matrices and needs a second optimizer for biases; the engine "
        "does not build such hybrids yet. Use adamw, or register a hybrid through the "
        "optimlab.optimizers entry point."
    ),
}


# -- third-party optimizers: the pytorch-optimizer extra and the entry-point group


class _PytorchOptimizerCommon(_Strict):
    weight_decay: NonNegative = 0.0
    foreach: bool | None = None
    maximize: bool = False


class _Decoupled(_PytorchOptimizerCommon):
    weight_decouple: bool = True
    fixed_decay: bool = False


class LionParams(_Decoupled):
    betas: Betas = (0.9, 0.99)


class LambParams(_Decoupled):
    betas: Betas = (0.9, 0.999)
    rectify: bool = False
    degenerated_to_sgd: bool = False
    n_sma_threshold: Annotated[int, Field(ge=0)] = 5
    grad_averaging: bool = True
    max_grad_norm: NonNegative = 1.0
    adam: bool = False
    pre_norm: bool = False
    eps: NonNegative = 1e-6


class ProdigyParams(_Decoupled):
    betas: Betas = (0.9, 0.999)
    beta3: Beta | None = None
    d0: Positive = 1e-6
    d_coef: Positive = 1.0
    growth_rate: Positive = math.inf
    bias_correction: bool = False
    safeguard_warmup: bool = False
    eps: NonNegative | None = 1e-8


class AdanParams(_PytorchOptimizerCommon):
    betas: Annotated[tuple[Beta, Beta, Beta], BeforeValidator(_as_tuple)] = (0.98, 0.92, 0.99)
    weight_decouple: bool = False
    max_grad_norm: NonNegative = 0.0
    eps: NonNegative = 1e-8


class AdaBeliefParams(_Decoupled):
    betas: Betas = (0.9, 0.999)
    rectify: bool = False
    n_sma_threshold: Annotated[int, Field(ge=0)] = 5
    degenerated_to_sgd: bool = True
    ams_bound: bool = False
    eps: NonNegative = 1e-16


class MADGRADParams(_PytorchOptimizerCommon):
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    weight_decouple: bool = False
    eps: NonNegative = 1e-6


_EXTRA = "pytorch-optimizer"
_PYTORCH_OPTIMIZERS: list[type[_OptimizerBase]] = [
    _optimizer(
        "lion", "pytorch_optimizer:Lion", LionParams, 1e-4, "Lion (sign momentum), from pytorch-optimizer.", _EXTRA
    ),
    _optimizer(
        "lamb",
        "pytorch_optimizer:Lamb",
        LambParams,
        1e-3,
        "LAMB (layer-wise adaptive), from pytorch-optimizer.",
        _EXTRA,
    ),
    _optimizer(
        "prodigy",
        "pytorch_optimizer:Prodigy",
        ProdigyParams,
        1.0,
        "Prodigy (learning-rate free), from pytorch-optimizer.",
        _EXTRA,
    ),
    _optimizer(
        "adan", "pytorch_optimizer:Adan", AdanParams, 1e-3, "Adan (Nesterov adaptive), from pytorch-optimizer.", _EXTRA
    ),
    _optimizer(
        "adabelief", "pytorch_optimizer:AdaBelief", AdaBeliefParams, 1e-3, "AdaBelief, from pytorch-optimizer.", _EXTRA
    ),
    _optimizer("madgrad", "pytorch_optimizer:MADGRAD", MADGRADParams, 1e-3, "MADGRAD, from pytorch-optimizer.", _EXTRA),
]


def _plugin_optimizers() -> list[type[_OptimizerBase]]:
    taken = {name for v in _TORCH_OPTIMIZERS + _PYTORCH_OPTIMIZERS for name in variant_names(v)}
    found = []
    for entry in entry_points(group="optimlab.optimizers"):
        plugin = entry.load()
        if not isinstance(plugin, OptimizerPlugin):
            raise TypeError(f"entry point {entry.name!r} must name an optim_engine.OptimizerPlugin")
        if plugin.name in taken or plugin.name in REJECTED_OPTIMIZERS:
            raise ValueError(f"optimizer plugin {plugin.name!r} clashes with a built-in optimizer name")
        taken.add(plugin.name)
        found.append(
            _optimizer(plugin.name, plugin.target, plugin.params_model, plugin.default_lr, plugin.description, "plugin")
        )
    return found


OPTIMIZER_VARIANTS: list[type[_OptimizerBase]] = _TORCH_OPTIMIZERS + _PYTORCH_OPTIMIZERS + _plugin_optimizers()


def _reject_known(rejected: dict[str, str], kind: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, dict) and value.get("name") in rejected:
            raise ValueError(f"{kind} {value['name']!r} is not supported: {rejected[value['name']]}")
        return value

    return BeforeValidator(check)


if TYPE_CHECKING:
    OptimizerSpec = _OptimizerBase
else:
    OptimizerSpec = Annotated[
        Union[tuple(OPTIMIZER_VARIANTS)],  # type: ignore[valid-type]  # noqa: UP007
        Field(discriminator="name"),
        _reject_known(REJECTED_OPTIMIZERS, "optimizer"),
    ]


# --------------------------------------------------------------------------- schedulers


class _SchedulerBase(_Strict):
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


class StepLRParams(_Strict):
    step_size: Annotated[int, Field(ge=1)]
    gamma: Positive = 0.1


class MultiStepLRParams(_Strict):
    milestones: list[Annotated[int, Field(ge=1)]]
    gamma: Positive = 0.1

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, milestones: list[int]) -> list[int]:
        if milestones != sorted(set(milestones)):
            raise ValueError("milestones must be strictly increasing")
        return milestones


class ConstantLRParams(_Strict):
    factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0 / 3
    total_iters: Annotated[int, Field(ge=0)] = 5


class LinearLRParams(_Strict):
    start_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0 / 3
    end_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    total_iters: Annotated[int, Field(ge=1)] = 5


class ExponentialLRParams(_Strict):
    gamma: Positive


class PolynomialLRParams(_Strict):
    total_iters: Annotated[int, Field(ge=1)] = 5
    power: NonNegative = 1.0


class CosineAnnealingLRParams(_Strict):
    T_max: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="None: the length of this scheduler's span (whole run, or its epochs in a chain)."
    )
    eta_min: NonNegative = 0.0


class CosineAnnealingWarmRestartsParams(_Strict):
    T_0: Annotated[int, Field(ge=1)]
    T_mult: Annotated[int, Field(ge=1)] = 1
    eta_min: NonNegative = 0.0


class CyclicLRParams(_Strict):
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


class OneCycleLRParams(_Strict):
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


class ReduceLROnPlateauParams(_Strict):
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
        Union[tuple(SCHEDULER_VARIANTS)],  # type: ignore[valid-type]  # noqa: UP007
        Field(discriminator="name"),
        _reject_known(REJECTED_SCHEDULERS, "scheduler"),
    ]


# --------------------------------------------------------------------------- models

Activation = Literal["relu", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu"]
Width = Annotated[int, Field(ge=1, le=65_536)]


class _ModelBase(_Strict):
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


class CNNParams(_Strict):
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


class _ModelSpec(_Strict):
    pass


class LinearModel(_ModelSpec):
    """A single affine layer: nn.Linear(in_features, out_features)."""

    name: Literal["linear"]
    params: LinearParams = Field(default_factory=LinearParams)


class LogisticRegressionModel(_ModelSpec):
    """A single affine layer whose outputs are class logits."""

    name: Literal["logistic_regression"]
    params: LogisticRegressionParams = Field(default_factory=LogisticRegressionParams)


class MLPModel(_ModelSpec):
    """A multilayer perceptron: depth hidden layers of the given width."""

    name: Literal["mlp"]
    params: MLPParams = Field(default_factory=MLPParams)


class CNNModel(_ModelSpec):
    """A small convolutional net for datasets with an image shape (digits, MNIST, CIFAR-10)."""

    name: Literal["cnn"]
    params: CNNParams = Field(default_factory=CNNParams)


ModelSpec = Annotated[Union[LinearModel, LogisticRegressionModel, MLPModel, CNNModel], Field(discriminator="name")]  # noqa: UP007


# --------------------------------------------------------------------------- datasets

Task = Literal["classification", "regression"]
Samples = Annotated[int, Field(ge=2, le=10_000_000)]


class _DatasetBase(_Strict):
    val_fraction: Annotated[float, Field(ge=0.0, le=0.9)] = Field(
        default=0.2, description="Share of the data held out for validation (0: no validation set)."
    )
    split_seed: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Seeds the train/validation split (and synthetic data); not the run seed."
    )


class SyntheticRegressionParams(_Strict):
    n_samples: Samples = 1024
    n_features: Width = 10
    n_targets: Annotated[int, Field(ge=1, le=1024)] = 1
    noise: NonNegative = 0.1


class SyntheticClassificationParams(_Strict):
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


class _TabularParams(_Strict):
    standardize: bool = Field(default=True, description="Scale features with the training split's mean and std.")


class SklearnDataset(_DatasetBase):
    """A dataset bundled with scikit-learn (no download)."""

    name: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"]
    params: _TabularParams = Field(default_factory=_TabularParams)


class FileParams(_TabularParams):
    path: str = Field(description="Relative to the data root (OPTIMLAB_DATA_DIR).")
    task: Task = "classification"


class NpzParams(FileParams):
    x_key: str = "x"
    y_key: str = "y"


class CsvParams(FileParams):
    target: str | int = Field(default=-1, description="Target column: a header name or an index (-1: last).")
    delimiter: str = ","
    header: bool = True


class NpzDataset(_DatasetBase):
    """Arrays from an .npz file under the data root."""

    name: Literal["npz"]
    params: NpzParams


class CsvDataset(_DatasetBase):
    """A numeric csv file under the data root."""

    name: Literal["csv"]
    params: CsvParams


class VisionParams(_Strict):
    use_test_split: bool = Field(
        default=True, description="Validate on the official test split (else val_fraction of the training split)."
    )
    limit: Annotated[int, Field(ge=2)] | None = Field(default=None, description="Use only the first N training images.")
    standardize: bool = False


class VisionDataset(_DatasetBase):
    """MNIST, FashionMNIST or CIFAR-10 from the data root, in torchvision's file layout."""

    name: Literal["mnist", "fashion_mnist", "cifar10"]
    params: VisionParams = Field(default_factory=VisionParams)


DatasetSpec = Annotated[
    Union[  # noqa: UP007
        SyntheticRegressionDataset,
        SyntheticClassificationDataset,
        SklearnDataset,
        NpzDataset,
        CsvDataset,
        VisionDataset,
    ],
    Field(discriminator="name"),
]


class DatasetInfo(BaseModel):
    """What the other parts of a spec need to know about a dataset, without loading it as tensors."""

    task: Task
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


def data_root(info: ValidationInfo | None = None) -> Path:
    """The data root: ``context={"data_root": ...}`` at validation, else the setting."""
    context = info.context if info is not None and isinstance(info.context, dict) else {}
    return Path(context.get("data_root") or get_settings().data_dir)


def file_arrays(dataset: NpzDataset | CsvDataset, root: Path) -> _data_files.ArrayData:
    """Read a file dataset's arrays (shared by validation and the engine's builder)."""
    path = _data_files.resolve_data_path(dataset.params.path, root)
    if isinstance(dataset, NpzDataset):
        arrays = _data_files.load_npz(path, dataset.params.x_key, dataset.params.y_key)
    else:
        arrays = _data_files.load_csv(path, dataset.params.target, dataset.params.delimiter, dataset.params.header)
    return arrays


def _file_info(dataset: NpzDataset | CsvDataset, root: Path) -> DatasetInfo:
    arrays = file_arrays(dataset, root)
    x, y = arrays.x, arrays.y
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape (n_samples >= 2, n_features), got {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
    if not (x.dtype.kind in "fiub" and y.dtype.kind in "fiub"):
        raise ValueError("features and targets must be numeric")
    n_features = int(math.prod(x.shape[1:]))
    if dataset.params.task == "classification":
        if y.ndim != 1 or (y.dtype.kind == "f" and not (y == y.round()).all()) or y.min() < 0:
            raise ValueError("classification targets must be a 1-D array of class indices 0..K-1")
        return DatasetInfo(
            task="classification", n_features=n_features, n_outputs=max(int(y.max()) + 1, 2), n_samples=x.shape[0]
        )
    n_targets = 1 if y.ndim == 1 else int(math.prod(y.shape[1:]))
    return DatasetInfo(task="regression", n_features=n_features, n_outputs=n_targets, n_samples=x.shape[0])


def dataset_info(dataset: Any, root: Path | None = None) -> DatasetInfo:
    """Shape and task of a dataset spec; file datasets are read (and cached) to find out."""
    root = root if root is not None else Path(get_settings().data_dir)
    if isinstance(dataset, SyntheticRegressionDataset):
        p = dataset.params
        return DatasetInfo(task="regression", n_features=p.n_features, n_outputs=p.n_targets, n_samples=p.n_samples)
    if isinstance(dataset, SyntheticClassificationDataset):
        c = dataset.params
        return DatasetInfo(task="classification", n_features=c.n_features, n_outputs=c.n_classes, n_samples=c.n_samples)
    if isinstance(dataset, SklearnDataset):
        return _SKLEARN_INFO[dataset.name]
    if isinstance(dataset, VisionDataset):
        if importlib.util.find_spec("torchvision") is None or not get_settings().allow_download:
            _data_files.vision_paths(dataset.name, root)
        info = _VISION_INFO[dataset.name]
        if dataset.params.limit is not None:
            info = info.model_copy(update={"n_samples": min(info.n_samples, dataset.params.limit)})
        return info
    return _file_info(dataset, root)


# --------------------------------------------------------------------------- losses


class _LossBase(_Strict):
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


def _loss_shorthand(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


LossSpec = Annotated[
    Union[MSELoss, L1Loss, SmoothL1Loss, HuberLoss, CrossEntropyLoss, BCEWithLogitsLoss],  # noqa: UP007
    Field(discriminator="name"),
    BeforeValidator(_loss_shorthand),
]


# --------------------------------------------------------------------------- run policy


class EarlyStopping(_Strict):
    """Stop when the monitored loss has not improved by min_delta for patience epochs."""

    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: NonNegative = 0.0
    monitor: Literal["val_loss", "train_loss"] = "val_loss"


class DivergencePolicy(_Strict):
    """When a run counts as diverged (a result, not an error)."""

    enabled: bool = True
    max_loss_ratio: Annotated[float, Field(gt=1.0)] = Field(
        default=1e3, description="Diverged when an epoch's train loss exceeds this multiple of the first batch's loss."
    )


# --------------------------------------------------------------------------- the job spec


class JobSpec(_Strict):
    """One training run: what to train, on what data, with which optimizer and schedule."""

    model: ModelSpec = Field(default_factory=lambda: LinearModel(name="linear"))
    dataset: DatasetSpec = Field(default_factory=lambda: SyntheticRegressionDataset(name="synthetic_regression"))
    loss: LossSpec = Field(default_factory=lambda: MSELoss(name="mse"))
    optimizer: OptimizerSpec
    scheduler: (
        Annotated[
            list[SchedulerSpec],
            Field(
                min_length=1,
                max_length=8,
                description="One scheduler, or a list that runs them one after another (each for its epochs).",
            ),
            BeforeValidator(_as_list),
        ]
        | None
    ) = None
    epochs: Annotated[int, Field(ge=1, le=100_000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")] = "auto"
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: autocast the forward pass.")
    compile: bool = Field(default=False, description="Wrap the model in torch.compile.")
    grad_clip_norm: Positive | None = Field(default=None, description="Clip the global gradient norm each step.")
    early_stopping: EarlyStopping | None = None
    divergence: DivergencePolicy = Field(default_factory=DivergencePolicy)

    @property
    def schedulers(self) -> list[Any]:
        """The scheduler spec as a list (empty when there is none)."""
        return list(self.scheduler or [])

    def info(self, root: Path | None = None) -> DatasetInfo:
        """The dataset's task and shape."""
        return dataset_info(self.dataset, root)

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> JobSpec:
        root = data_root(info)
        try:
            data = dataset_info(self.dataset, root)
        except ValueError as exc:
            raise ValueError(f"dataset.params: {exc}") from exc
        _check_optimizer(self.optimizer)
        _check_loss(self.loss, data)
        _check_model(self.model, data, self.loss)
        _check_schedulers(self.schedulers, self)
        if self.early_stopping and self.early_stopping.monitor == "val_loss" and self._no_validation(data):
            raise ValueError("early_stopping.monitor: val_loss needs a validation set (dataset.val_fraction > 0)")
        return self

    def _no_validation(self, data: DatasetInfo) -> bool:
        if isinstance(self.dataset, VisionDataset) and self.dataset.params.use_test_split:
            return False
        return int(data.n_samples * self.dataset.val_fraction) == 0

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON form: equal specs, equal hashes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_yaml(self) -> str:
        """The spec as YAML (round-trips through ``from_yaml``)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, context: dict[str, Any] | None = None) -> JobSpec:
        """Parse and validate a YAML spec."""
        return cls.model_validate(yaml.safe_load(text), context=context)

    @classmethod
    def from_json(cls, text: str, *, context: dict[str, Any] | None = None) -> JobSpec:
        """Parse and validate a JSON spec."""
        return cls.model_validate_json(text, context=context)


def output_size(loss: Any, data: DatasetInfo) -> int:
    """How many outputs the model needs for this loss on this dataset."""
    if isinstance(loss, BCEWithLogitsLoss):
        return 1
    return data.n_outputs


def _check_optimizer(optimizer: Any) -> None:
    if optimizer.extra == _EXTRA and importlib.util.find_spec("pytorch_optimizer") is None:
        raise ValueError(
            f"optimizer: {optimizer.name} needs the pytorch-optimizer package: pip install 'optimlab[pytorch-optimizer]'"
        )


def _check_loss(loss: Any, data: DatasetInfo) -> None:
    if data.task not in loss.tasks:
        fitting = "cross_entropy or bce_with_logits" if data.task == "classification" else "mse, l1, smooth_l1 or huber"
        raise ValueError(f"loss: {loss.name} does not fit a {data.task} dataset; use {fitting}")
    if isinstance(loss, BCEWithLogitsLoss) and data.n_outputs != 2:
        raise ValueError(f"loss: bce_with_logits needs a binary dataset, this one has {data.n_outputs} classes")


def _check_model(model: Any, data: DatasetInfo, loss: Any) -> None:
    if isinstance(model, CNNModel):
        if data.image_shape is None:
            raise ValueError("model: cnn needs an image dataset (digits, mnist, fashion_mnist, cifar10)")
        return
    wanted_out = output_size(loss, data)
    if isinstance(model, LogisticRegressionModel) and data.task != "classification":
        raise ValueError("model: logistic_regression needs a classification dataset; use linear")
    params = model.params
    if params.in_features is not None and params.in_features != data.n_features:
        raise ValueError(
            f"model.params.in_features: {params.in_features} but the dataset has {data.n_features} features"
        )
    if params.out_features is not None and params.out_features != wanted_out:
        raise ValueError(
            f"model.params.out_features: {params.out_features} but {loss.name} on this dataset needs {wanted_out}"
        )


def _has_momentum(optimizer: Any) -> bool:
    return bool({"momentum", "betas"} & optimizer.param_keys)


def _check_schedulers(schedulers: list[Any], spec: JobSpec) -> None:
    if len({s.interval for s in schedulers}) > 1:
        raise ValueError("scheduler: every scheduler in a chain must use the same interval")
    for i, sched in enumerate(schedulers):
        where = f"scheduler[{i}]" if len(schedulers) > 1 else "scheduler"
        if i < len(schedulers) - 1 and sched.epochs is None:
            raise ValueError(f"{where}.epochs: every scheduler but the last in a chain needs epochs")
        if sched.name == "reduce_lr_on_plateau":
            if len(schedulers) > 1:
                raise ValueError(f"{where}: reduce_lr_on_plateau cannot be chained")
            if sched.interval != "epoch":
                raise ValueError(f"{where}.interval: reduce_lr_on_plateau steps once per epoch")
        if getattr(sched.params, "cycle_momentum", False) and not _has_momentum(spec.optimizer):
            raise ValueError(
                f"{where}.params.cycle_momentum: {spec.optimizer.name} has no momentum or betas; set it to false"
            )
    spans = sum(s.epochs for s in schedulers[:-1])
    if spans >= spec.epochs:
        raise ValueError(
            f"scheduler: the chain's epochs ({spans}) leave none of the run's {spec.epochs} epochs for the last scheduler"
        )


# --------------------------------------------------------------------------- errors and the host

FieldProblem = tuple[tuple[str, ...], str]
"""A problem with one field of a spec: its location (``("dataset", "params", "path")``) and a message."""


def host_problems(spec: JobSpec, data_root: Path | None = None) -> list[FieldProblem]:
    """What this host cannot provide for ``spec`` (data files, installed extras, plugins); empty
    when it can train it. The API calls it at submission and the worker before training."""
    return []


_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_]+)*): (.*)$", re.S)


def error_details(errors: Iterable[Any]) -> list[dict[str, Any]]:
    """Pydantic errors (``ValidationError.errors()``) as ``{"loc": [...], "msg": ..., "type": ...}``,
    with a cross-field error's own location appended to ``loc``."""
    detail = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", ""))
        match = _FIELD_PREFIX.match(msg)
        if match and error.get("type") == "value_error":
            loc += match.group(1).split(".")
            msg = match.group(2)
        detail.append({"loc": loc, "msg": msg.removeprefix("Value error, "), "type": str(error.get("type", "invalid"))})
    return detail
