"""optim_engine: the pure-PyTorch training engine behind optimlab.

The spec, its results and the catalog import no torch, so the API can validate and describe
jobs without loading it; the training entry points load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optim_engine._catalog import catalog
from optim_engine.packing import PackCheck, can_pack, pack_key
from optim_engine.plugins import OptimizerPlugin
from optim_engine.results import EpochMetrics, TrainResult
from optim_engine.spec import SURFACES, JobSpec, LRRangeTest, Surface

if TYPE_CHECKING:
    from optim_engine._datasets import TensorData, build_dataset
    from optim_engine._loop import resolve_device
    from optim_engine._models import build_loss, build_model
    from optim_engine._optim import build_optimizer, build_scheduler
    from optim_engine._packed import train_packed
    from optim_engine._trials import train, train_trials

__all__ = [
    "SURFACES",
    "EpochMetrics",
    "JobSpec",
    "LRRangeTest",
    "OptimizerPlugin",
    "PackCheck",
    "Surface",
    "TensorData",
    "TrainResult",
    "build_dataset",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "can_pack",
    "catalog",
    "pack_key",
    "resolve_device",
    "train",
    "train_packed",
    "train_trials",
]

_LAZY = {
    "TensorData": "optim_engine._datasets",
    "build_dataset": "optim_engine._datasets",
    "train": "optim_engine._trials",
    "train_packed": "optim_engine._packed",
    "train_trials": "optim_engine._trials",
    "resolve_device": "optim_engine._loop",
    "build_loss": "optim_engine._models",
    "build_model": "optim_engine._models",
    "build_optimizer": "optim_engine._optim",
    "build_scheduler": "optim_engine._optim",
}


def __getattr__(name: str) -> Any:
    # PEP 562: torch is imported only when a torch-backed name is first used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optim_engine' has no attribute {name!r}")
