"""The catalog: every model, dataset, loss, optimizer and scheduler a spec can name, with the
JSON schema of its params. Built from the spec without torch, so the API serves it; whether an
optimizer is available says what this host has (its extra installed, its plugin loaded)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from optim_engine import spec as _spec
from optim_engine.packing import PACKABLE_MODELS, PACKABLE_OPTIMIZERS
from optim_engine.spec.datasets import DATASET_PLUGIN_ERRORS, PluginDataset
from optim_engine.spec.host import extra_missing
from optim_engine.spec.models import MODEL_PLUGIN_ERRORS, PluginModel


def _entry(name: str, variant: type[BaseModel], kind: str) -> dict[str, Any]:
    fields = variant.model_fields
    params_model: Any = fields["params"].annotation if "params" in fields else None
    entry: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "description": (variant.__doc__ or "").strip().splitlines()[0] if variant.__doc__ else "",
        "params_schema": params_model.model_json_schema() if params_model is not None else {},
        "available": True,
    }
    if kind in ("optimizer", "model"):  # whether sweeps can train it in packs (train_packed)
        entry["packable"] = name in (PACKABLE_OPTIMIZERS if kind == "optimizer" else PACKABLE_MODELS)
    if kind == "optimizer":
        entry["default_lr"] = fields["lr"].default
        entry["target"] = variant.target  # type: ignore[attr-defined]
        extra = variant.extra  # type: ignore[attr-defined]
        if extra is not None:
            entry["requires"] = extra
            entry["available"] = not extra_missing(extra)
    if kind == "scheduler":
        entry["target"] = variant.target  # type: ignore[attr-defined]
        entry["interval"] = fields["interval"].default
    if kind == "loss":
        entry["params_schema"] = {k: v for k, v in variant.model_json_schema().items() if k != "title"}
        entry["tasks"] = list(variant.tasks)  # type: ignore[attr-defined]
    if issubclass(variant, PluginModel | PluginDataset):  # an installed package's, found by its entry point
        entry["requires"] = "plugin"
    if issubclass(variant, PluginModel):  # whether the server's parameter caps can hold it
        entry["counts_parameters"] = variant.plugin.parameter_count is not None
    if kind == "dataset" and name in ("mnist", "fashion_mnist", "cifar10"):
        entry["requires"] = "files under OPTIMLAB_DATA_DIR (or OPTIMLAB_ALLOW_DOWNLOAD=true with torchvision)"
    if kind == "dataset" and name in _spec.SURFACES:  # a 2-D function: what its plot and its runs start from
        found = _spec.SURFACES[name]
        entry["description"] = found.description
        entry["surface"] = {
            "start": list(found.start),
            "bounds": [list(found.bounds[0]), list(found.bounds[1])],
            "minimum": list(found.minimum) if found.minimum is not None else None,
        }
    return entry


def _union_members(union: Any) -> list[type[BaseModel]]:
    inner = typing.get_args(union)[0]
    return list(typing.get_args(inner))


def _unavailable(name: str, kind: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "available": False, "reason": reason, "params_schema": {}, **extra}


def catalog() -> dict[str, list[dict[str, Any]]]:
    """Every registry entry by kind, each with its params' JSON schema.

    Names that torch offers but no spec can use (SparseAdam, LambdaLR, ...) and optimizer,
    model and dataset plugins that failed to load appear with ``available: false`` and the reason.
    """
    result: dict[str, list[dict[str, Any]]] = {}
    kinds: dict[str, tuple[str, list[type[BaseModel]]]] = {
        "models": ("model", _union_members(_spec.ModelSpec)),
        "datasets": ("dataset", _union_members(_spec.DatasetSpec)),
        "losses": ("loss", _union_members(_spec.LossSpec)),
        "optimizers": ("optimizer", list(_spec.OPTIMIZER_VARIANTS)),
        "schedulers": ("scheduler", list(_spec.SCHEDULER_VARIANTS)),
    }
    for key, (kind, variants) in kinds.items():
        result[key] = [_entry(name, v, kind) for v in variants for name in _spec.variant_names(v)]
    for key, rejected in (("optimizers", _spec.REJECTED_OPTIMIZERS), ("schedulers", _spec.REJECTED_SCHEDULERS)):
        result[key] += [_unavailable(name, key[:-1], reason) for name, reason in rejected.items()]
    failed = (
        ("optimizers", _spec.PLUGIN_ERRORS),
        ("models", MODEL_PLUGIN_ERRORS),
        ("datasets", DATASET_PLUGIN_ERRORS),
    )
    for key, errors in failed:
        listed = {entry["name"] for entry in result[key]}
        result[key] += [
            _unavailable(name, key[:-1], reason, requires="plugin")
            for name, reason in errors.items()
            if name not in listed  # a failed plugin named like a built-in does not hide it
        ]
    return result
