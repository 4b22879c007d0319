"""Request and response bodies of /v1/jobs. The summary and epoch-row fields are derived from the
engine's metric definitions (``optim_engine.results``), so a new metric needs no edit here."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, computed_field, create_model, model_validator

from optim_engine.results import METRICS, SUMMARY_METRICS
from optim_engine.spec import JobSpec
from service.db.models import Job
from service.longpoll import job_token
from service.schemas import EXAMPLE_SPEC, StorableJson, Text, json_integers
from service.spec_codec import decode

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/=-]+$")]

FINAL_COLUMNS = tuple(f"final_{m.name}" for m in SUMMARY_METRICS)
BEST_COLUMNS = tuple(f"best_{m.name}" for m in SUMMARY_METRICS)
"""Each summary metric's job columns: its last epoch's value, and its best over the epochs."""


CACHE_DESCRIPTION = (
    "Reuse an identical earlier run (same spec and seed, torch version, device kind and optimlab "
    "version, succeeded, yours) instead of training: the job is created succeeded with its results "
    "and cached_from naming it. false: train anyway."
)


class JobCreate(BaseModel):
    """A job to run: the spec, plus optional tags and a display name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"spec": EXAMPLE_SPEC, "tags": ["baseline"], "name": "sgd baseline"}]},
    )

    spec: Annotated[JobSpec, StorableJson] = Field(
        description='Non-finite floats may be written "Infinity", "-Infinity", "NaN".'
    )
    tags: Annotated[list[Tag], Field(max_length=32)] = Field(default_factory=list)
    name: Annotated[Text, Field(max_length=200)] | None = None
    cache: StrictBool = Field(default=True, description=CACHE_DESCRIPTION)

    @model_validator(mode="before")
    @classmethod
    def _from_json(cls, data: Any) -> Any:
        """The spec as JSON writes it: "Infinity" and the like, 3.0 for an integer."""
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            return {**data, "spec": json_integers(decode(data["spec"]))}
        return data


def _optional_float(description: str) -> Any:
    return (float | None, Field(description=description))


# create_model builds the classes; they are subclassed below so that type checkers see classes.
_JobSummaryFields: Any = create_model(
    "JobSummaryFields",
    epochs_done=(int, ...),
    epochs_total=(int, ...),
    **{f"final_{m.name}": _optional_float(f"Last epoch's {m.name}.") for m in SUMMARY_METRICS},
    best_loss=_optional_float("Best monitored loss (validation loss when there is a validation set)."),
    best_epoch=(int | None, ...),
    **{f"best_{m.name}": _optional_float(f"Best {m.name} over the epochs ({m.best}).") for m in SUMMARY_METRICS},
    wall_seconds=(
        float | None,
        Field(
            description=(
                "Seconds the job's attempts ran, summed: not the time it waited between them (handed back "
                "while the server was down, queued again). Counted by the worker and written with every "
                "heartbeat, so it grows while the job runs and an attempt whose worker died counts up to "
                "its last heartbeat. run_seconds is the time from first start to finish instead."
            )
        ),
    ),
    diverged_epoch=(int | None, ...),
    resumed_from_epoch=(
        int | None,
        Field(
            description=(
                "Epoch restored from a checkpoint on the latest attempt that resumed one: set with the first "
                "epoch that attempt reports, not only when the job finishes."
            )
        ),
    ),
)

_EpochRowFields: Any = create_model(
    "EpochRowFields", epoch=(int, ...), **{m.name: _optional_float(m.description) for m in METRICS}
)


class JobSummary(_JobSummaryFields):
    """Where a job stands and its results so far, from its summary columns."""

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        columns = ("epochs_done", *FINAL_COLUMNS, "best_loss", "best_epoch", *BEST_COLUMNS)
        return cls(
            epochs_total=int(job.spec.get("epochs", 0)),
            wall_seconds=job.wall_seconds,
            diverged_epoch=job.diverged_epoch,
            resumed_from_epoch=job.resumed_from_epoch,
            **{name: getattr(job, name) for name in columns},
        )


class EpochRow(_EpochRowFields):
    """One epoch's metrics."""


class JobOut(BaseModel):
    id: int
    owner: str = Field(description="The owner of the key that created it ('' : created with auth off).")
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
    cached_from: int | None = Field(
        description="Served from the result cache: the job whose run it copies (it never trained itself)."
    )
    summary: JobSummary
    environment: dict[str, Any] | None
    created_at: dt.datetime
    enqueued_at: dt.datetime | None = Field(description="When its message reached the broker; null until then.")
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    run_seconds: float | None = Field(description="From first start to finish (or to now while running).")

    @computed_field(  # type: ignore[prop-decorator]
        description=(
            "Changes whenever status, summary.epochs_done, attempt or cancel_requested does: pass it as "
            "?since= with ?wait_s= to GET /v1/jobs/{id} to wait for the next change."
        )
    )
    @property
    def state_token(self) -> str:
        epochs_done = self.summary.epochs_done  # type: ignore[attr-defined]  # a create_model field
        return job_token(self.status, epochs_done, self.attempt, self.cancel_requested)

    @classmethod
    def of(cls, job: Job, now: dt.datetime) -> JobOut:
        """The job as the API shows it: its columns, its tags, its summary and its run time."""
        end = job.finished_at or (now if job.status == "running" else None)
        derived = {
            "tags": [t.tag for t in job.tags],
            "summary": JobSummary.of(job),
            "run_seconds": (end - job.started_at).total_seconds() if end and job.started_at else None,
        }
        columns = {name: getattr(job, name) for name in cls.model_fields if name not in derived}
        return cls(**columns, **derived)


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class JobMetrics(BaseModel):
    job_id: int
    status: str
    epochs_done: int
    rows: list[EpochRow] = Field(description="One row per epoch; NaN/inf (a diverged run) are null.")
