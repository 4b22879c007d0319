"""Optimizer variants: torch.optim's, the pytorch-optimizer extra's, and registered plugins'.

Each variant's params mirror the constructor it builds (a test holds them to the installed
classes). A plugin that fails to load never breaks an import: it is recorded in
``PLUGIN_ERRORS`` and every spec that names it is rejected with the reason.
"""

from __future__ import annotations

import logging
import math
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, Field, create_model, model_validator

from optim_engine.plugins import OptimizerPlugin
from optim_engine.spec._base import (
    Beta,
    Betas,
    Implementation,
    LearningRate,
    NonNegative,
    Positive,
    StrictModel,
    Unbounded,
    as_tuple,
    reject_known,
    variant_names,
)

log = logging.getLogger(__name__)

PLUGIN_GROUP = "optimlab.optimizers"


# --------------------------------------------------------------------------- torch.optim


class SGDParams(StrictModel):
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


class _AdamFamily(StrictModel):
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


class RMSpropParams(StrictModel):
    alpha: NonNegative = 0.99
    eps: NonNegative = 1e-8
    weight_decay: NonNegative = 0.0
    momentum: NonNegative = 0.0
    centered: bool = False
    capturable: bool = False
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False


class AdagradParams(StrictModel):
    lr_decay: NonNegative = 0.0
    weight_decay: NonNegative = 0.0
    initial_accumulator_value: NonNegative = 0.0
    eps: NonNegative = 1e-10
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False
    fused: Implementation = None


class AdadeltaParams(StrictModel):
    rho: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    eps: NonNegative = 1e-6
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    capturable: bool = False
    maximize: bool = False
    differentiable: bool = False


class ASGDParams(StrictModel):
    lambd: NonNegative = 1e-4
    alpha: NonNegative = 0.75
    t0: NonNegative = 1e6
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False
    capturable: bool = False


class RpropParams(StrictModel):
    etas: Annotated[tuple[Positive, Positive], BeforeValidator(as_tuple)] = (0.5, 1.2)
    step_sizes: Annotated[tuple[NonNegative, NonNegative], BeforeValidator(as_tuple)] = (1e-6, 50.0)
    capturable: bool = False
    foreach: Implementation = None
    maximize: bool = False
    differentiable: bool = False

    @model_validator(mode="after")
    def _eta_order(self) -> RpropParams:
        if not 0.0 < self.etas[0] < 1.0 < self.etas[1]:
            raise ValueError(f"Invalid eta values: {self.etas[0]}, {self.etas[1]} (need 0 < eta- < 1 < eta+)")
        return self


class LBFGSParams(StrictModel):
    max_iter: Annotated[int, Field(ge=1, le=1000)] = 20
    max_eval: Annotated[int, Field(ge=1)] | None = None
    tolerance_grad: NonNegative = 1e-7
    tolerance_change: NonNegative = 1e-9
    history_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    line_search_fn: Literal["strong_wolfe"] | None = None


class AdafactorParams(StrictModel):
    beta2_decay: Annotated[float, Field(le=0.0)] = -0.8
    eps: Annotated[tuple[NonNegative | None, NonNegative], BeforeValidator(as_tuple)] = (None, 1e-3)
    d: NonNegative = 1.0
    weight_decay: NonNegative = 0.0
    foreach: Implementation = None
    maximize: bool = False


class _OptimizerBase(StrictModel):
    if TYPE_CHECKING:  # fields every variant adds (see _optimizer)
        name: str
        lr: float
        params: BaseModel

    # Import path of the class this variant builds, ``module:attribute``.
    target: ClassVar[str]
    # The pip extra that provides ``target`` when it is not part of torch ("plugin" for plugins).
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


# --------------------------------------------------------------------------- the pytorch-optimizer extra


class _PytorchOptimizerCommon(StrictModel):
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
    growth_rate: Unbounded = math.inf
    bias_correction: bool = False
    safeguard_warmup: bool = False
    eps: NonNegative | None = 1e-8


class AdanParams(_PytorchOptimizerCommon):
    betas: Annotated[tuple[Beta, Beta, Beta], BeforeValidator(as_tuple)] = (0.98, 0.92, 0.99)
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


PYTORCH_OPTIMIZER_EXTRA = "pytorch-optimizer"
_EXTRA = PYTORCH_OPTIMIZER_EXTRA
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


# --------------------------------------------------------------------------- plugins

PLUGIN_ERRORS: dict[str, str] = {}
"""Optimizer plugins that failed to load: entry-point name -> why. Filled at import.

A spec naming one is rejected at validation (located at ``optimizer``) rather than reported by
``host_problems``: without the plugin its params model is unknown, so the spec cannot be parsed
at all, and a bare "does not match any of the expected tags" would hide the reason.
"""


def _load_plugin(entry: EntryPoint, taken: set[str]) -> type[_OptimizerBase]:
    plugin = entry.load()
    if not isinstance(plugin, OptimizerPlugin):
        raise TypeError(f"it names a {type(plugin).__name__}, not an optim_engine.OptimizerPlugin")
    if plugin.name in taken or plugin.name in REJECTED_OPTIMIZERS:
        raise ValueError(f"its name {plugin.name!r} clashes with a built-in optimizer or another plugin")
    return _optimizer(plugin.name, plugin.target, plugin.params_model, plugin.default_lr, plugin.description, "plugin")


def _plugin_optimizers() -> list[type[_OptimizerBase]]:
    """The variants of every plugin in the entry-point group; failures go to ``PLUGIN_ERRORS``."""
    taken = {name for v in _TORCH_OPTIMIZERS + _PYTORCH_OPTIMIZERS for name in variant_names(v)}
    found = []
    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            variant = _load_plugin(entry, taken)
        except Exception as exc:  # any failure of third-party code: record it, keep importing
            reason = f"the plugin failed to load ({entry.value}): {type(exc).__name__}: {exc}"
            log.warning("optimizer plugin %r: %s", entry.name, reason)
            PLUGIN_ERRORS[entry.name] = reason
            continue
        taken.update(variant_names(variant))
        found.append(variant)
    return found


OPTIMIZER_VARIANTS: list[type[_OptimizerBase]] = _TORCH_OPTIMIZERS + _PYTORCH_OPTIMIZERS + _plugin_optimizers()


def _unusable() -> dict[str, str]:
    # A failed plugin whose entry point is named like a usable optimizer does not shadow it.
    usable = {name for v in OPTIMIZER_VARIANTS for name in variant_names(v)}
    failed = {name: reason for name, reason in PLUGIN_ERRORS.items() if name not in usable}
    return failed | REJECTED_OPTIMIZERS


UNUSABLE_OPTIMIZERS: dict[str, str] = _unusable()
"""Names a spec cannot use, with the reason: torch's unusable classes and failed plugins."""

if TYPE_CHECKING:
    OptimizerSpec = _OptimizerBase
else:
    OptimizerSpec = Annotated[
        Union[tuple(OPTIMIZER_VARIANTS)],  # noqa: UP007
        Field(discriminator="name"),
        reject_known(UNUSABLE_OPTIMIZERS, "optimizer"),
    ]
