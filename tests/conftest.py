"""Shared fixtures and spec factories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from optim_engine.settings import get_settings


def seed_spec(optimizer: dict[str, Any], scheduler: Any = None, **overrides: Any) -> dict[str, Any]:
    """The seed article's problem: Linear(10, 1) + MSE on synthetic regression data."""
    spec: dict[str, Any] = {
        "model": {"name": "linear", "params": {"in_features": 10, "out_features": 1}},
        "dataset": {"name": "synthetic_regression", "params": {"n_samples": 512, "n_features": 10}},
        "loss": "mse",
        "optimizer": optimizer,
        "epochs": 3,
        "batch_size": 32,
        "seed": 0,
        "device": "cpu",
    }
    if scheduler is not None:
        spec["scheduler"] = scheduler
    spec.update(overrides)
    return spec


def digits_spec(optimizer: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A small MLP on scikit-learn's digits."""
    spec: dict[str, Any] = {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 32}},
        "dataset": {"name": "digits"},
        "loss": "cross_entropy",
        "optimizer": optimizer,
        "epochs": 2,
        "batch_size": 64,
        "device": "cpu",
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh OPTIMLAB_DATA_DIR for file datasets."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("OPTIMLAB_DATA_DIR", str(root))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()
