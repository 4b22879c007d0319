"""Shared fixtures and spec factories."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from optim_engine.settings import get_settings

# The device the spec factories train on: cpu, or cuda when bench/gpu_check.sh re-runs the engine
# tests on a GPU (an explicit "device" override in a test still wins).
TEST_DEVICE = os.environ.get("OPTIMLAB_TEST_DEVICE", "cpu")


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
        "device": TEST_DEVICE,
    }
    if scheduler is not None:
        spec["scheduler"] = scheduler
    spec.update(overrides)
    return spec


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds (work a background thread does); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true after {timeout} s"
        time.sleep(0.02)


def digits_spec(optimizer: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A small MLP on scikit-learn's digits."""
    spec: dict[str, Any] = {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 32}},
        "dataset": {"name": "digits"},
        "loss": "cross_entropy",
        "optimizer": optimizer,
        "epochs": 2,
        "batch_size": 64,
        "device": TEST_DEVICE,
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


# --- the service's backends --------------------------------------------------------------------

SERVICE_ENV = (
    "OPTIMLAB_HOME",
    "OPTIMLAB_DATABASE_URL",
    "OPTIMLAB_BROKER_URL",
    "OPTIMLAB_API_KEYS",
    "OPTIMLAB_AUTH",
    "OPTIMLAB_REQUEUE_QUEUED_AFTER_S",
)


@pytest.fixture(autouse=True)
def _clean_service_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never inherit a developer's OPTIMLAB_* service settings."""
    from service.settings import get_settings as service_settings

    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    service_settings.cache_clear()
    yield
    service_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from tests.servers import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    from tests.servers import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated database on each backend: one contract suite, two databases."""
    from service.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'optimlab.db'}"
    else:
        server = request.getfixturevalue("postgres")
        url = server.url(server.create_database())
    upgrade(url)
    return url


@pytest.fixture
def sessions(database_url: str) -> Iterator[Any]:
    """A session factory on ``database_url`` (each backend in turn)."""
    from service.db.session import make_engine, make_session_factory

    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def service_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    """Settings for a test service: its own home (embedded broker, checkpoints); its dispatcher
    sends new jobs but never requeues lost ones (no recovery passes)."""
    from service.settings import Settings

    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "reaper_interval_s": 0,
        "heartbeat_interval_s": 0.2,
        "stale_after_s": 60,
    }
    values.update(overrides)
    return Settings(**values)
