"""The job spec: the one contract between the API, the workers and the engine.

Pure pydantic, no torch, so the API validates with exactly the schema the workers train from.
Models, datasets, losses, optimizers and schedulers are discriminated unions on ``name``; each
variant's params mirror the torch constructor they build (a test holds them to the installed
torch). Validation reads the spec alone; what the host must provide is ``host_problems``'s;
what a run would cost (parameters, memory, steps) is ``estimate``'s.
"""

from __future__ import annotations

from optim_engine.spec._base import StrictModel, variant_names
from optim_engine.spec.cost import Cost, CostLimits, cost_problems, estimate, parameter_count
from optim_engine.spec.datasets import (
    CsvDataset,
    CsvParams,
    DatasetInfo,
    DatasetSpec,
    FileParams,
    NpzDataset,
    NpzParams,
    QuadraticDataset,
    QuadraticParams,
    SklearnDataset,
    SurfaceDataset,
    SurfaceParams,
    SyntheticClassificationDataset,
    SyntheticClassificationParams,
    SyntheticRegressionDataset,
    SyntheticRegressionParams,
    Task,
    VisionDataset,
    VisionParams,
    static_info,
)
from optim_engine.spec.errors import SPEC_ERROR, FieldProblem, error_details
from optim_engine.spec.host import dataset_info, file_arrays, file_shape, host_problems
from optim_engine.spec.job import DivergencePolicy, EarlyStopping, JobSpec, LRRangeTest
from optim_engine.spec.losses import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    L1Loss,
    LossSpec,
    MSELoss,
    SmoothL1Loss,
    ValueLoss,
    output_size,
)
from optim_engine.spec.models import (
    CNNModel,
    CNNParams,
    LinearModel,
    LinearParams,
    LogisticRegressionModel,
    LogisticRegressionParams,
    MLPModel,
    MLPParams,
    ModelSpec,
    PointModel,
    PointParams,
)
from optim_engine.spec.optimizers import (
    OPTIMIZER_VARIANTS,
    PLUGIN_ERRORS,
    REJECTED_OPTIMIZERS,
    OptimizerSpec,
)
from optim_engine.spec.schedulers import REJECTED_SCHEDULERS, SCHEDULER_VARIANTS, SchedulerSpec
from optim_engine.spec.surfaces import SURFACES, Surface, grid, surface

__all__ = [
    "OPTIMIZER_VARIANTS",
    "PLUGIN_ERRORS",
    "REJECTED_OPTIMIZERS",
    "REJECTED_SCHEDULERS",
    "SCHEDULER_VARIANTS",
    "SPEC_ERROR",
    "SURFACES",
    "BCEWithLogitsLoss",
    "CNNModel",
    "CNNParams",
    "Cost",
    "CostLimits",
    "CrossEntropyLoss",
    "CsvDataset",
    "CsvParams",
    "DatasetInfo",
    "DatasetSpec",
    "DivergencePolicy",
    "EarlyStopping",
    "FieldProblem",
    "FileParams",
    "HuberLoss",
    "JobSpec",
    "L1Loss",
    "LRRangeTest",
    "LinearModel",
    "LinearParams",
    "LogisticRegressionModel",
    "LogisticRegressionParams",
    "LossSpec",
    "MLPModel",
    "MLPParams",
    "MSELoss",
    "ModelSpec",
    "NpzDataset",
    "NpzParams",
    "OptimizerSpec",
    "PointModel",
    "PointParams",
    "QuadraticDataset",
    "QuadraticParams",
    "SchedulerSpec",
    "SklearnDataset",
    "SmoothL1Loss",
    "StrictModel",
    "Surface",
    "SurfaceDataset",
    "SurfaceParams",
    "SyntheticClassificationDataset",
    "SyntheticClassificationParams",
    "SyntheticRegressionDataset",
    "SyntheticRegressionParams",
    "Task",
    "ValueLoss",
    "VisionDataset",
    "VisionParams",
    "cost_problems",
    "dataset_info",
    "error_details",
    "estimate",
    "file_arrays",
    "file_shape",
    "grid",
    "host_problems",
    "output_size",
    "parameter_count",
    "static_info",
    "surface",
    "variant_names",
]
