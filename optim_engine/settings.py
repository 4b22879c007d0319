"""Engine settings read from ``OPTIMLAB_*`` environment variables; imports no torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EngineSettings(BaseSettings):
    """What the engine needs from its host: where data lives and how to use the CPU.

    The service's settings extend this class, so one set of ``OPTIMLAB_`` variables
    configures the API, the workers and the engine alike.
    """

    model_config = SettingsConfigDict(env_prefix="OPTIMLAB_", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"),
        description="Root for file datasets (npz, csv, MNIST, CIFAR-10); specs cannot reach outside it.",
    )
    allow_download: bool = Field(
        default=False,
        description="Let torchvision download MNIST/FashionMNIST/CIFAR-10 into data_dir when missing.",
    )
    max_file_bytes: int = Field(
        default=512 << 20,
        ge=1,
        description=(
            "Largest dataset file (npz or csv) the host check reads, and largest array inside an npz "
            "once inflated: bigger is a 422 at dataset.params.path, before anything is loaded."
        ),
    )
    max_outputs: int = Field(
        default=100_000,
        ge=2,
        description="Most model outputs (classes or targets); a file's class label must be below it.",
    )
    torch_threads: int = Field(
        default=1,
        ge=0,
        description=(
            "Intra-op threads per training process (0 leaves torch's default). One thread per "
            "process is fastest for small models and does not collapse when processes share cores."
        ),
    )


@lru_cache
def get_settings() -> EngineSettings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return EngineSettings()
