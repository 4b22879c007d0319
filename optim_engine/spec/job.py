"""The job spec (``JobSpec``), its run policies, and the rules between its parts.

Every rule here reads the spec alone: validation reads no file, no setting and no installed
package, so a spec is valid or not on every host alike. What the host must provide (data files,
extras) is ``optim_engine.spec.host``'s to check.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, model_validator

from optim_engine.spec._base import NonNegative, Positive, StrictModel, as_list
from optim_engine.spec.datasets import (
    SURFACE_NAMES,
    DatasetInfo,
    DatasetSpec,
    PluginDataset,
    QuadraticDataset,
    SurfaceDataset,
    SyntheticRegressionDataset,
    VisionDataset,
    dataset_task,
    static_info,
)
from optim_engine.spec.errors import FieldProblem, problem_error
from optim_engine.spec.losses import BCEWithLogitsLoss, LossSpec, MSELoss, output_size
from optim_engine.spec.models import (
    CNNModel,
    LinearModel,
    LogisticRegressionModel,
    ModelSpec,
    PluginModel,
    PointModel,
    plugin_model_problems,
)
from optim_engine.spec.optimizers import OptimizerSpec
from optim_engine.spec.schedulers import SchedulerSpec


class EarlyStopping(StrictModel):
    """Stop when the monitored loss has not improved by min_delta for patience epochs."""

    patience: Annotated[int, Field(ge=1)] = 5
    min_delta: NonNegative = 0.0
    monitor: Literal["val_loss", "train_loss"] = "val_loss"


class DivergencePolicy(StrictModel):
    """When a run counts as diverged (a result, not an error)."""

    enabled: bool = True
    max_loss_ratio: Annotated[float, Field(gt=1.0)] = Field(
        default=1e3, description="Diverged when an epoch's train loss exceeds this multiple of the first batch's loss."
    )


RangeLR = Annotated[float, Field(gt=0.0, le=1e4, allow_inf_nan=False)]


class LRRangeTest(StrictModel):
    """An LR range test instead of training (Smith 2015/2017; fastai's ``lr_find`` defaults).

    The lr grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps on
    the training batches (cycled as needed), until the smoothed loss passes ``stop_factor`` times
    its best. ``epochs``, ``divergence`` and ``val_fraction`` play no part; the job reports no
    epochs and stores the curve and its suggestions as its result.
    """

    start_lr: RangeLR = 1e-7
    end_lr: RangeLR = 10.0
    steps: Annotated[int, Field(ge=1, le=10_000)] = 100
    smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.98, description="beta of the bias-corrected moving average of the loss (0: no smoothing)."
    )
    stop_factor: Annotated[float, Field(gt=1.0, allow_inf_nan=False)] = Field(
        default=4.0,
        description="Stop once the smoothed loss exceeds this multiple of its best (a non-finite loss stops it too).",
    )


class JobSpec(StrictModel):
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
            BeforeValidator(as_list),
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
    lr_range_test: LRRangeTest | None = Field(
        default=None, description="Run an LR range test with this model, data and optimizer instead of training."
    )

    @property
    def schedulers(self) -> list[Any]:
        """The scheduler spec as a list (empty when there is none)."""
        return list(self.scheduler or [])

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        # Pydantic reports one error per model validator; the first broken rule is it. A file
        # dataset's shape rules wait for host_problems, which reports them all.
        problems = cross_field_problems(self, static_info(self.dataset))
        if problems:
            raise problem_error(problems[0])
        return self

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON form: equal specs, equal hashes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_yaml(self) -> str:
        """The spec as YAML (round-trips through ``from_yaml``)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, context: dict[str, Any] | None = None) -> JobSpec:
        """Parse and validate a YAML spec (``context`` is passed to pydantic; the spec reads none)."""
        return cls.model_validate(yaml.safe_load(text), context=context)

    @classmethod
    def from_json(cls, text: str, *, context: dict[str, Any] | None = None) -> JobSpec:
        """Parse and validate a JSON spec (``context`` is passed to pydantic; the spec reads none)."""
        return cls.model_validate_json(text, context=context)


def cross_field_problems(spec: JobSpec, info: DatasetInfo | None) -> list[FieldProblem]:
    """Every rule between a spec's parts that ``spec`` breaks, given its dataset's shape.

    With ``info`` None (a file dataset, whose shape is the file's) the rules that need the shape
    are skipped; ``host_problems`` runs them again with the shape it reads from the file.
    """
    return [
        *_loss_problems(spec.loss, dataset_task(spec.dataset), info),
        *_model_problems(spec, info),
        *_scheduler_problems(spec),
        *_early_stopping_problems(spec, info),
        *_range_test_problems(spec),
        *_surface_problems(spec),
    ]


_FITTING = {
    "classification": "cross_entropy or bce_with_logits",
    "regression": "mse, l1, smooth_l1 or huber",
    "function": "value, with model point (the function's value at the point is the loss)",
}


def _loss_problems(loss: Any, task: str, info: DatasetInfo | None) -> list[FieldProblem]:
    if task not in loss.tasks:
        return [(("loss",), f"{loss.name} does not fit a {task} dataset; use {_FITTING[task]}")]
    if isinstance(loss, BCEWithLogitsLoss) and info is not None and info.n_outputs != 2:
        return [(("loss",), f"bce_with_logits needs a binary dataset, this one has {info.n_outputs} classes")]
    return []


def _model_problems(spec: JobSpec, info: DatasetInfo | None) -> list[FieldProblem]:
    model, loss = spec.model, spec.loss
    function = isinstance(spec.dataset, SurfaceDataset | QuadraticDataset)
    if function or isinstance(model, PointModel):
        if function and not isinstance(model, PointModel):
            return [(("model",), f"{spec.dataset.name} is a 2-D function: its model is point")]
        if not function:
            return [(("model",), f"point needs a 2-D function dataset ({', '.join(SURFACE_NAMES)})")]
        return []
    if isinstance(model, PluginModel):
        return plugin_model_problems(model, info)
    if isinstance(model, CNNModel):
        # A file dataset never has an image shape, so a cnn on one is wrong without reading it;
        # a plugin dataset's shape is its describe's, which the host check reads.
        unread = info is None and isinstance(spec.dataset, PluginDataset)
        if not unread and (info is None or info.image_shape is None):
            return [(("model",), "cnn needs an image dataset (digits, mnist, fashion_mnist, cifar10)")]
        return []
    if isinstance(model, LogisticRegressionModel) and dataset_task(spec.dataset) != "classification":
        return [(("model",), "logistic_regression needs a classification dataset; use linear")]
    if info is None or info.task not in loss.tasks:  # no shape yet, or the loss rule already broken
        return []
    problems: list[FieldProblem] = []
    params = model.params
    if params.in_features is not None and params.in_features != info.n_features:
        where = ("model", "params", "in_features")
        problems.append((where, f"{params.in_features} but the dataset has {info.n_features} features"))
    wanted_out = output_size(loss, info)
    if params.out_features is not None and params.out_features != wanted_out:
        where = ("model", "params", "out_features")
        problems.append((where, f"{params.out_features} but {loss.name} on this dataset needs {wanted_out}"))
    return problems


def _has_momentum(optimizer: Any) -> bool:
    return bool({"momentum", "betas"} & optimizer.param_keys)


def _scheduler_problems(spec: JobSpec) -> list[FieldProblem]:
    schedulers = spec.schedulers
    problems: list[FieldProblem] = []
    if len({s.interval for s in schedulers}) > 1:
        problems.append((("scheduler",), "every scheduler in a chain must use the same interval"))
    for i, sched in enumerate(schedulers):
        where = ("scheduler", str(i))
        if i < len(schedulers) - 1 and sched.epochs is None:
            problems.append(((*where, "epochs"), "every scheduler but the last in a chain needs epochs"))
        if sched.name == "reduce_lr_on_plateau" and len(schedulers) > 1:
            problems.append((where, "reduce_lr_on_plateau cannot be chained"))
        if sched.name == "reduce_lr_on_plateau" and sched.interval != "epoch":
            problems.append(((*where, "interval"), "reduce_lr_on_plateau steps once per epoch"))
        if getattr(sched.params, "cycle_momentum", False) and not _has_momentum(spec.optimizer):
            message = f"{spec.optimizer.name} has no momentum or betas; set it to false"
            problems.append(((*where, "params", "cycle_momentum"), message))
    spans = sum(s.epochs or 0 for s in schedulers[:-1])
    if spans >= spec.epochs:
        message = f"the chain's epochs ({spans}) leave none of the run's {spec.epochs} epochs for the last scheduler"
        problems.append((("scheduler",), message))
    return problems


def _early_stopping_problems(spec: JobSpec, info: DatasetInfo | None) -> list[FieldProblem]:
    if spec.early_stopping is None or spec.early_stopping.monitor != "val_loss":
        return []
    dataset = spec.dataset
    if isinstance(dataset, SurfaceDataset | QuadraticDataset):
        return [(("early_stopping", "monitor"), "a 2-D function has no validation set; monitor train_loss")]
    if isinstance(dataset, VisionDataset) and dataset.params.use_test_split:
        return []
    # With val_fraction 0 there is no validation set whatever the size; otherwise the size decides.
    n_samples = info.n_samples if info is not None else None
    if dataset.val_fraction == 0 or (n_samples is not None and int(n_samples * dataset.val_fraction) == 0):
        return [(("early_stopping", "monitor"), "val_loss needs a validation set (dataset.val_fraction > 0)")]
    return []


def _range_test_problems(spec: JobSpec) -> list[FieldProblem]:
    """A range test sets the lr itself, every step, and stops on its own rule."""
    test = spec.lr_range_test
    if test is None:
        return []
    problems: list[FieldProblem] = []
    if test.start_lr >= test.end_lr:
        message = f"{test.end_lr:g} must be above start_lr ({test.start_lr:g}): the lr grows over the test"
        problems.append((("lr_range_test", "end_lr"), message))
    if spec.scheduler is not None:
        problems.append((("scheduler",), "a range test sets the lr itself each step; remove the scheduler"))
    if spec.early_stopping is not None:
        message = "a range test stops on its own rule (lr_range_test.stop_factor); remove early_stopping"
        problems.append((("early_stopping",), message))
    if isinstance(spec.dataset, SurfaceDataset | QuadraticDataset):
        problems.append((("lr_range_test",), "a range test needs a training dataset, not a 2-D function"))
    return problems


def _surface_problems(spec: JobSpec) -> list[FieldProblem]:
    """What a 2-D function run cannot honour: it has no network to compile or autocast."""
    if not isinstance(spec.dataset, SurfaceDataset | QuadraticDataset):
        return []
    problems: list[FieldProblem] = []
    if spec.compile:
        problems.append((("compile",), "a 2-D function run has no network to compile; set it to false"))
    if spec.precision != "fp32":
        problems.append((("precision",), "a 2-D function run is float64 on the CPU; set precision to fp32"))
    steps = spec.epochs * spec.dataset.params.steps_per_epoch
    if steps > MAX_PATH_STEPS:
        message = f"{steps} steps; a 2-D run keeps its whole path (checkpointed), so at most {MAX_PATH_STEPS}"
        problems.append((("dataset", "params", "steps_per_epoch"), message))
    return problems


MAX_PATH_STEPS = 200_000
"""The most steps of a 2-D function run: its path (3 floats a step) lives in memory and in every
checkpoint; the stored result keeps an evenly spaced subset of it."""
