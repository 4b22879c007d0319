"""The service's settings: one ``OPTIMLAB_*`` environment for the API, the workers and the engine."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from optim_engine.settings import EngineSettings


class Settings(EngineSettings):
    """Everything configurable, with embedded defaults: with nothing set, the service keeps a
    SQLite database and a filesystem broker under ``home`` and needs no server."""

    home: Path = Field(default=Path(".optimlab"), description="Embedded state: database, broker folders, checkpoints.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db (default: SQLite in home)."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker, e.g. redis://host:6379/0 (default: a filesystem broker in home)."
    )
    auth: Literal["none", "keys"] = Field(
        default="none",
        description=(
            "keys: every route but /healthz and /readyz needs 'Authorization: Bearer <API key>', and each key's "
            "owner sees only its own jobs and sweeps (admin keys see all). none: no keys, everything is open, "
            "so the API only binds a loopback interface."
        ),
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated static admin tokens (owner 'admin'), each at least 16 characters, to bootstrap "
            "before any key exists in the database (`optimlab keys create`); needs OPTIMLAB_AUTH=keys."
        ),
    )
    checkpoint_dir: Path | None = Field(default=None, description="Per-job checkpoints (default: home/checkpoints).")
    keep_checkpoints: bool = Field(
        default=False, description="Keep a finished job's checkpoint instead of deleting it."
    )
    checkpoint_every_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "Checkpoint after each epoch unless the last checkpoint is younger than this (0: every epoch). "
            "A killed worker loses at most this much work; tiny models skip a checkpoint every few ms. A "
            "stopped one (SIGTERM) checkpoints its last whole epoch regardless."
        ),
    )
    metrics_flush_s: float = Field(
        default=0.25,
        ge=0,
        description="Write epoch rows at most this often (rows in between go in one transaction; 0: every epoch).",
    )
    auto_device_queue: Literal["cpu", "gpu"] = Field(
        default="cpu", description="Queue for specs with device 'auto' (compose on GPU hosts sets gpu)."
    )

    # Resource caps: a spec over a cap is a 422 naming the field.
    max_epochs: int = Field(default=10_000, ge=1)
    max_batch_size: int = Field(default=65_536, ge=1)
    max_samples: int = Field(default=5_000_000, ge=1, description="Cap on a synthetic dataset's n_samples.")
    max_model_width: int = Field(default=16_384, ge=1, description="Cap on an MLP's width / a CNN's channels.")
    # Cost caps: bounds on what a spec would allocate and compute (optim_engine.spec.cost), so a
    # spec within every per-field cap cannot still ask a worker for tens of GB.
    max_parameters: int = Field(default=50_000_000, ge=1, description="Cap on a model's parameter count.")
    max_model_bytes: int = Field(
        default=8 << 30,
        ge=1,
        description="Cap on fp32 bytes of a model's parameters, gradients and optimizer state together.",
    )
    max_dataset_bytes: int = Field(
        default=2 << 30, ge=1, description="Cap on a dataset's tensors: samples x (features + targets) x 4 bytes."
    )
    max_steps: int = Field(
        default=10_000_000, ge=1, description="Cap on a job's optimizer steps: epochs x ceil(train samples / batch)."
    )
    max_sweep_jobs: int = Field(default=1_000, ge=1, description="Cap on the jobs one sweep expands to.")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body (413 beyond); a spec or a sweep is a few KiB."
    )
    max_json_depth: int = Field(
        default=64, ge=1, description="Deepest nesting of a JSON body (400 beyond); a sweep nests about 10 deep."
    )
    max_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=60.0,
        description="Longest a long-poll GET (?wait_s=) is held; a larger wait_s waits this long (0: never held).",
    )
    longpoll_interval_s: float = Field(
        default=0.05,
        gt=0,
        description=(
            "On PostgreSQL, how often a held GET reads its job's or sweep's state (sooner just after it starts): "
            "the delay between a change landing and its waiter's answer; one indexed read per waiter each time. "
            "On SQLite workers tell the API of each change (service.events) and a waiter reads when told, and "
            "at least every second."
        ),
    )
    pack_max: int = Field(
        default=32,
        ge=1,
        description=(
            "Most trials in one pack (a sweep's jobs trained together by one worker task). Larger packs "
            "amortize more per step; smaller ones spread a sweep over more workers."
        ),
    )
    result_cache: bool = Field(
        default=True,
        description=(
            "Serve a job from the result cache: an identical run (same spec and seed, torch version, device "
            "kind and optimlab version) that succeeded for the same owner is copied, not trained again. "
            "false: every job trains (a request's `cache: false` does the same for one job or sweep)."
        ),
    )
    gpu_workers: bool = Field(
        default=True,
        description=(
            "Whether a worker with a GPU serves this server. false: the API refuses `device: cuda`/`cuda:N` "
            "specs (jobs and every sweep trial) with a 422 at spec.device instead of queueing jobs no worker "
            "can run; `optimlab up` sets it false when it starts its workers without GPUs."
        ),
    )
    curve_cache_bytes: int = Field(
        default=64 << 20,
        ge=0,
        description=(
            "Bytes of finished sweeps' encoded bulk curves (GET /v1/sweeps/{id}/metrics) an API process keeps, "
            "least recently used dropped first (0: none kept). A finished sweep's curves never change."
        ),
    )
    curve_stream_rows: int = Field(
        default=100_000,
        ge=1,
        description=(
            "A sweep with more epoch rows than this gets its bulk curves as a stream, a few hundred jobs at a "
            "time, never held whole in memory (nor cached)."
        ),
    )

    # Reliability: the database is the record, the broker only delivers.
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="How often a running job proves its worker lives."
    )
    stale_after_s: float = Field(
        default=60.0, gt=0, description="A running job whose heartbeat is older than this is requeued and resumes."
    )
    stop_within_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "A running job stops within about this long, even inside a long epoch, once it is cancelled, its "
            "worker shuts down (SIGTERM, Ctrl-C of `optimlab up`: its jobs go back to the queue and resume from "
            "a checkpoint of their last whole epoch) or another attempt took it over. An epoch that ends within "
            "stop_within_s / 5 is finished first (epochs longer than that are checkpointed each, whatever "
            "checkpoint_every_s says). Workers read the jobs' flags every stop_within_s / 4 (a read; the "
            "heartbeat write stays at heartbeat_interval_s), training asks for them at least every 0.2 s, and "
            "flags older than stop_within_s / 2 are read again before a checkpoint is written. Keep it well "
            "under stale_after_s."
        ),
    )
    requeue_queued_after_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "Re-enqueue jobs still queued after this long while no worker is busy (0: off). The embedded "
            "brokers lose a message whose consumer is killed; Redis keeps them, so deployments leave it off."
        ),
    )
    reaper_interval_s: float = Field(default=5.0, ge=0, description="How often the API checks for stale jobs (0: off).")
    metrics_public: bool = Field(
        default=False,
        description=(
            "With OPTIMLAB_AUTH=keys, serve GET /metrics without a key (counts only, no owner's data); "
            "otherwise a scraper sends an admin key as its bearer token."
        ),
    )
    dispatch_interval_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "How often the API process sends unsent jobs to the broker (it also sends at once after a POST). "
            "0: this process does not dispatch (another replica does); nothing is sent from it."
        ),
    )
    search_lease_s: float = Field(
        default=15.0,
        gt=0,
        description=(
            "How long an API process's sweep controller keeps the lease on an adaptive sweep after each pass "
            "that creates its trials; another replica takes the search over once it lapses (its own process "
            "died). The primary key of sweep_trials, not the lease, keeps a trial from being created twice."
        ),
    )
    database_retry_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "How long a worker retries a database write (claim, epoch rows, final status) before it gives "
            "up: a task whose claim failed goes back to the broker; a job whose writes failed is requeued."
        ),
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description=(
            "Redis redelivers an unacknowledged task after this long. Recovery from a dead worker comes from "
            "the heartbeat (stale_after_s); this is the backstop, and a duplicate delivery of a live job is a no-op."
        ),
    )
    unacked_restore_interval_s: float = Field(default=10.0, gt=0, description="How often kombu sweeps unacked tasks.")
    prune_refresh_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "How stale a worker's view of the other trials of a pruned adaptive sweep may be: it reads their "
            "curves again at most this often (its own trials' epochs it knows at once)."
        ),
    )
    broker_polling_interval_s: float = Field(default=0.02, gt=0, description="Poll interval of the embedded broker.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # Empty entries are kept: start-up refuses them (service.auth.service.check_configuration)
        # rather than silently running with fewer keys than written.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",")] if value.strip() else []
        return value

    @property
    def embedded(self) -> bool:
        """True when no broker URL is configured: the filesystem broker under ``home`` is used."""
        return self.broker_url is None

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'optimlab.db').resolve()}"

    def resolved_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir if self.checkpoint_dir is not None else self.home / "checkpoints"

    def broker_folder(self) -> Path:
        return (self.home / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
