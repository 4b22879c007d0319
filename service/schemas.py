"""Request and response bodies of the REST API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from optim_engine.spec import JobSpec
from service.db.models import Job
from service.spec_codec import decode

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/=-]+$")]


class JobCreate(BaseModel):
    """A job to run: the spec, plus optional tags and a display name."""

    model_config = ConfigDict(extra="forbid")

    spec: JobSpec = Field(description='Non-finite floats may be written "Infinity", "-Infinity", "NaN".')
    tags: Annotated[list[Tag], Field(max_length=32)] = Field(default_factory=list)
    name: Annotated[str, Field(max_length=200)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _non_finite_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            return {**data, "spec": decode(data["spec"])}
        return data


class JobSummary(BaseModel):
    epochs_done: int
    epochs_total: int
    final_train_loss: float | None
    final_val_loss: float | None
    final_val_accuracy: float | None
    best_loss: float | None = Field(description="Best monitored loss (validation loss when there is a validation set).")
    best_epoch: int | None
    best_train_loss: float | None
    best_val_loss: float | None
    best_val_accuracy: float | None
    wall_seconds: float | None
    diverged_epoch: int | None
    resumed_from_epoch: int | None = Field(description="Epoch restored from a checkpoint on the latest attempt.")


class JobOut(BaseModel):
    id: int
    sweep_id: int | None
    pack_id: str | None = Field(description="Set when the job trains in a pack with others of its sweep.")
    config: dict[str, Any] | None = Field(description="A sweep job's searched values (seed excluded).")
    name: str | None
    status: str
    tags: list[str]
    optimizer: str
    queue: str
    attempt: int
    worker: str | None
    device: str | None
    error: str | None
    cancel_requested: bool
    spec: dict[str, Any]
    spec_hash: str
    summary: JobSummary
    environment: dict[str, Any] | None
    created_at: dt.datetime
    enqueued_at: dt.datetime | None
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    run_seconds: float | None = Field(description="From first start to finish (or to now while running).")

    @classmethod
    def of(cls, job: Job, now: dt.datetime) -> JobOut:
        end = job.finished_at or (now if job.status == "running" else None)
        return cls(
            id=job.id,
            sweep_id=job.sweep_id,
            pack_id=job.pack_id,
            config=job.config,
            name=job.name,
            status=job.status,
            tags=[t.tag for t in job.tags],
            optimizer=job.optimizer,
            queue=job.queue,
            attempt=job.attempt,
            worker=job.worker,
            device=job.device,
            error=job.error,
            cancel_requested=job.cancel_requested,
            spec=job.spec,
            spec_hash=job.spec_hash,
            summary=JobSummary(
                epochs_done=job.epochs_done,
                epochs_total=int(job.spec.get("epochs", 0)),
                final_train_loss=job.final_train_loss,
                final_val_loss=job.final_val_loss,
                final_val_accuracy=job.final_val_accuracy,
                best_loss=job.best_loss,
                best_epoch=job.best_epoch,
                best_train_loss=job.best_train_loss,
                best_val_loss=job.best_val_loss,
                best_val_accuracy=job.best_val_accuracy,
                wall_seconds=job.wall_seconds,
                diverged_epoch=job.diverged_epoch,
                resumed_from_epoch=job.resumed_from_epoch,
            ),
            environment=job.environment,
            created_at=job.created_at,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            heartbeat_at=job.heartbeat_at,
            finished_at=job.finished_at,
            run_seconds=(end - job.started_at).total_seconds() if end and job.started_at else None,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class EpochRow(BaseModel):
    epoch: int
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float | None
    grad_norm: float | None
    epoch_seconds: float | None
    samples_per_second: float | None


class JobMetrics(BaseModel):
    job_id: int
    status: str
    epochs_done: int
    rows: list[EpochRow] = Field(description="One row per epoch; NaN/inf (a diverged run) are null.")


class ErrorOut(BaseModel):
    error: str
    detail: Any


class LeaderboardRow(BaseModel):
    rank: int
    config: dict[str, Any] = Field(description="The searched values this row's jobs share (seed excluded).")
    config_hash: str | None
    jobs: int
    n: int = Field(description="Succeeded jobs with a value: the statistics are over these.")
    mean: float | None
    std: float | None = Field(description="Sample standard deviation (n - 1).")
    ci95_low: float | None = Field(description="95% confidence interval of the mean, Student t with n - 1 df.")
    ci95_high: float | None
    min: float | None
    max: float | None
    diverged: int
    failed: int
    pending: int
    mean_wall_seconds: float | None


class Leaderboard(BaseModel):
    sweep_id: int
    metric: str
    mode: str
    which: str
    rows: list[LeaderboardRow]


class SweepOut(BaseModel):
    id: int
    name: str | None
    created_at: dt.datetime
    n_jobs: int
    counts: dict[str, int] = Field(description="Jobs per status.")
    done: bool = Field(description="No job is queued or running.")
    best: LeaderboardRow | None = Field(description="The leaderboard's top configuration (val_loss, else train_loss).")
    template: dict[str, Any]
    search: dict[str, Any]
    execution: str = Field(description="auto, packed or separate (see POST /v1/sweeps).")


class SweepPage(BaseModel):
    items: list[SweepOut]
    next_cursor: str | None
