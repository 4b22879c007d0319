"""The REST API (FastAPI, versioned under /v1). Imports no torch: specs are validated with the
engine's torch-free schema and jobs are enqueued by task name."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import cache
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from optim_engine import catalog as engine_catalog
from optim_engine.spec import JobSpec, variant_names
from service import broker
from service.db import jobs as job_ops
from service.db import sweeps as sweep_ops
from service.db.models import METRIC_COLUMNS, JobStatus, Sweep
from service.db.session import make_engine, make_session_factory, utcnow
from service.errors import InvalidRequest, OptimlabError, ServiceUnavailable, Unauthorized
from service.reaper import Reaper
from service.schemas import (
    ErrorOut,
    JobCreate,
    JobMetrics,
    JobOut,
    JobPage,
    Leaderboard,
    LeaderboardRow,
    SweepOut,
    SweepPage,
)
from service.settings import Settings, get_settings
from service.spec_codec import encode, stored_spec
from service.sweeps import SweepCreate, SweepInvalid, expand, plan_packs
from service.sweeps import count as expanded_size

log = logging.getLogger("optimlab.api")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text_}
    for code, text_ in {
        401: "Missing or wrong API key",
        404: "Unknown job or sweep",
        409: "Illegal state transition or idempotency-key reuse",
        422: "Invalid request; `detail` lists each field",
        503: "Database or broker unavailable",
    }.items()
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database engine, Celery producer and reaper live as long as it does."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url())
        app.state.session_factory = make_session_factory(engine)
        app.state.celery = broker.make_celery(settings)
        reaper = Reaper(app.state.session_factory, app.state.celery, settings)
        stop = threading.Event()
        thread = None
        if settings.reaper_interval_s > 0:
            thread = threading.Thread(target=reaper.run_forever, args=(stop,), name="optimlab-reaper", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            engine.dispose()

    app = FastAPI(
        title="optimlab",
        version="0.1.0",
        description="Submit PyTorch training jobs and query every epoch's metrics.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(_routes(settings))
    return app


# --- dependencies ------------------------------------------------------------------------------


def _session(request: Request) -> Iterator[Session]:
    """One session per request: commit on success, roll back on error."""
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_session)]


def _require_key(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not any(secrets.compare_digest(token.strip(), key) for key in keys):
        raise Unauthorized("Send 'Authorization: Bearer <key>' with one of the server's OPTIMLAB_API_KEYS")


# --- routes ----------------------------------------------------------------------------------


def _routes(settings: Settings) -> APIRouter:
    health = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_require_key)], responses=ERRORS)

    @health.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @health.get("/readyz", tags=["health"], responses={503: {"model": ErrorOut}})
    def readyz(request: Request) -> JSONResponse:
        """The database and the broker are reachable."""
        checks = {"database": "ok", "broker": "ok"}
        try:
            with request.app.state.session_factory() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if not broker.broker_reachable(request.app.state.celery):
            checks["broker"] = "unreachable"
        ready = all(v == "ok" for v in checks.values())
        body = {"status": "ready"} | checks if ready else {"error": "unavailable", "detail": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @v1.post("/jobs", status_code=201, tags=["jobs"], response_model=JobOut)
    def create_job(
        body: JobCreate,
        request: Request,
        response: Response,
        session: SessionDep,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JobOut:
        """Validate a spec and queue it. With an `Idempotency-Key` header, a retried POST returns
        the job the first one created (200) instead of creating a second."""
        _check_caps(body.spec, settings)
        spec_json = stored_spec(body.spec)
        job, created = job_ops.create_job(
            session,
            spec=spec_json,
            spec_hash=body.spec.spec_hash(),
            optimizer=variant_names(type(body.spec.optimizer))[0],
            queue=broker.queue_for(body.spec.device, settings),
            tags=body.tags,
            name=body.name,
            idempotency_key=idempotency_key,
        )
        session.commit()  # the row exists before any worker can look for it
        if not created:
            response.status_code = 200
            return JobOut.of(job, utcnow())
        try:
            broker.enqueue(request.app.state.celery, job.id, job.queue)
        except Exception as exc:
            log.warning("enqueue of job %s failed: %s; removing it", job.id, exc)
            job_ops.delete_job(session, job.id)
            session.commit()
            raise ServiceUnavailable("The broker is unreachable; the job was not created. Retry later.") from exc
        return JobOut.of(job, utcnow())

    @v1.get("/jobs", tags=["jobs"])
    def list_jobs(
        session: SessionDep,
        status: Annotated[list[str] | None, Query(description="Repeat for several.")] = None,
        sweep_id: int | None = None,
        optimizer: str | None = None,
        tag: str | None = None,
        sort: Annotated[str, Query(description=f"One of {sorted(job_ops.SORTABLE)}; '-' for descending.")] = (
            "-created_at"
        ),
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs, filtered and sorted, one page at a time."""
        bad = [s for s in status or [] if s not in _STATUSES]
        if bad:
            raise InvalidRequest(f"status: unknown {bad}; use {sorted(_STATUSES)}")
        flt = job_ops.JobFilter(statuses=status or (), sweep_id=sweep_id, optimizer=optimizer, tag=tag)
        items, next_cursor = job_ops.list_jobs(session, flt, sort=sort, limit=limit, cursor=cursor)
        now = utcnow()
        return JobPage(items=[JobOut.of(j, now) for j in items], next_cursor=next_cursor)

    @v1.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: int, session: SessionDep) -> JobOut:
        """Status, spec, summary, error, attempt, worker, device and timings of one job."""
        return JobOut.of(job_ops.get_job(session, job_id), utcnow())

    @v1.get(
        "/jobs/{job_id}/metrics",
        tags=["jobs"],
        response_model=JobMetrics,
        responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"}},
    )
    def job_metrics(
        job_id: int,
        session: SessionDep,
        since_epoch: Annotated[int, Query(ge=0, description="Only epochs after this one (live polling).")] = 0,
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Response:
        """Every epoch's metrics; `?since_epoch=N` returns only newer epochs."""
        # The live-polling path: two indexed reads, plain rows, no ORM objects.
        status, epochs_done = job_ops.progress(session, job_id)
        rows = job_ops.epoch_rows(session, job_id, since_epoch)
        if format == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["epoch", *METRIC_COLUMNS])
            for row in rows:
                writer.writerow([row["epoch"], *("" if (v := row[c]) is None else repr(v) for c in METRIC_COLUMNS)])
            return Response(out.getvalue(), media_type="text/csv")
        body = {"job_id": job_id, "status": status, "epochs_done": epochs_done, "rows": rows}
        return JSONResponse(body)

    @v1.post("/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: int, session: SessionDep) -> JobOut:
        """Queued: it never runs. Running: it stops at its next epoch boundary. Finished: 409."""
        job = job_ops.request_cancel(session, job_id)
        session.commit()
        return JobOut.of(job, utcnow())

    @v1.post("/sweeps", status_code=201, tags=["sweeps"], response_model=SweepOut)
    def create_sweep(
        body: SweepCreate,
        request: Request,
        response: Response,
        session: SessionDep,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> SweepOut:
        """Expand a base spec and a search (grid, random, seeds) into jobs. Every expansion is
        validated first: one invalid combination rejects the sweep (422, naming it) and nothing
        is created. The jobs are created in one transaction and enqueued after it commits."""
        total = expanded_size(body)
        if total > settings.max_sweep_jobs:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "search"),
                        "msg": f"the sweep expands to {total} jobs; this server's cap is {settings.max_sweep_jobs}",
                        "type": "resource_cap",
                    }
                ]
            )
        trials = expand(body)  # SweepInvalid: a 422 naming the combinations (see the handlers)
        capped = [
            {
                "combination": encode(t.config | {"seed": t.seed}),
                "errors": [{"field": ".".join(("spec", *loc)), "msg": m}],
            }
            for t in trials
            for loc, m in _cap_problems(t.spec, settings)
        ]
        if capped:
            raise SweepInvalid(capped[:10])
        packs = plan_packs(trials, body.execution, settings.pack_max)  # SweepInvalid under "packed"
        sweep, jobs = sweep_ops.create_sweep(
            session,
            body,
            trials,
            queue_for=lambda device: broker.queue_for(device, settings),
            packs=packs,
            idempotency_key=idempotency_key,
        )
        session.commit()
        if not jobs:  # the idempotency key's first request created it
            response.status_code = 200
            return _sweep_out(session, sweep)
        tasks = broker.one_per_task(jobs)
        for index, (job_id, queue, pack_id) in enumerate(tasks):
            try:
                broker.enqueue(request.app.state.celery, job_id, queue, pack_id)
            except Exception as exc:
                if index == 0:  # nothing sent yet: undo, so a retry starts clean
                    log.warning("enqueue of sweep %s failed: %s; removing it", sweep.id, exc)
                    session.delete(sweep)
                    session.commit()
                    raise ServiceUnavailable("The broker is unreachable; the sweep was not created.") from exc
                log.warning(
                    "enqueue failed after %s of %s tasks: %s; the reaper sends the rest", index, len(tasks), exc
                )
                for unsent, _, unsent_pack in tasks[index:]:
                    job_ops.mark_unsent(session, unsent, unsent_pack)
                session.commit()
                break
        return _sweep_out(session, sweep)

    @v1.get("/sweeps", tags=["sweeps"])
    def list_sweeps(
        session: SessionDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    ) -> SweepPage:
        """Sweeps, newest first, with their counts (`best` is on GET /v1/sweeps/{id})."""
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidRequest("cursor: not a cursor from this list")
            before = int(cursor)
        sweeps = sweep_ops.list_sweeps(session, limit=limit + 1, before_id=before)
        counts = sweep_ops.status_counts(session, [sweep.id for sweep in sweeps[:limit]])
        page = [_sweep_out(session, sweep, counts[sweep.id], with_best=False) for sweep in sweeps[:limit]]
        return SweepPage(items=page, next_cursor=str(sweeps[limit - 1].id) if len(sweeps) > limit else None)

    @v1.get("/sweeps/{sweep_id}", tags=["sweeps"])
    def get_sweep(sweep_id: int, session: SessionDep) -> SweepOut:
        """Counts per status and the best configuration so far."""
        return _sweep_out(session, sweep_ops.get_sweep(session, sweep_id))

    @v1.post("/sweeps/{sweep_id}/cancel", tags=["sweeps"])
    def cancel_sweep(sweep_id: int, session: SessionDep) -> SweepOut:
        """Queued jobs never run; running ones stop at their next epoch boundary."""
        sweep = sweep_ops.cancel_sweep(session, sweep_id)
        session.commit()
        return _sweep_out(session, sweep)

    @v1.get("/sweeps/{sweep_id}/leaderboard", tags=["sweeps"])
    def leaderboard(
        sweep_id: int,
        session: SessionDep,
        metric: Annotated[str, Query(pattern="^(train_loss|val_loss|val_accuracy)$")] = "val_loss",
        mode: Annotated[str | None, Query(pattern="^(min|max)$", description="Default: min for losses")] = None,
        which: Annotated[str, Query(pattern="^(best|final)$", description="Best epoch's value or final")] = "best",
    ) -> Leaderboard:
        """Configurations ranked by the mean of the metric over seeds, with std, 95% CI, min,
        max, diverged count and mean wall time; computed in SQL from the jobs' summaries."""
        sweep_ops.get_sweep(session, sweep_id)
        query = sweep_ops.LeaderboardQuery(metric=metric, mode=mode, which=which)
        rows = sweep_ops.leaderboard(session, sweep_id, query)
        return Leaderboard(
            sweep_id=sweep_id,
            metric=metric,
            mode=query.resolved_mode(),
            which=which,
            rows=[LeaderboardRow(**row) for row in rows],
        )

    @v1.get(
        "/sweeps/{sweep_id}/metrics",
        tags=["sweeps"],
        responses={200: {"content": {"text/csv": {}}, "description": "Columnar JSON, or CSV with ?format=csv"}},
    )
    def sweep_metrics(
        sweep_id: int,
        session: SessionDep,
        columns: Annotated[str, Query(description="Comma-separated metric columns")] = "train_loss,val_loss",
        format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    ) -> Response:
        """Every job's per-epoch rows in one response: JSON `{"columns": [...], "rows": [[job_id,
        epoch, ...], ...], "jobs": [...]}` (each job's config, seed and status, to label curves)."""
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        names, rows = sweep_ops.sweep_metrics(session, sweep_id, wanted)
        if format == "csv":
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(names)
            writer.writerows(rows)
            return Response(out.getvalue(), media_type="text/csv")
        body = {"sweep_id": sweep_id, "columns": names, "rows": rows, "jobs": sweep_ops.sweep_jobs(session, sweep_id)}
        # orjson: a few ms for 50,000 rows where the standard library takes ~45.
        return Response(orjson.dumps(body), media_type="application/json")

    @v1.get("/catalog", tags=["catalog"])
    def get_catalog() -> dict[str, list[dict[str, Any]]]:
        """Models, datasets, losses, optimizers and schedulers, each with its params' JSON schema."""
        return _catalog()

    health.include_router(v1)
    return health


_STATUSES = {status.value for status in JobStatus}


def _sweep_out(
    session: Session, sweep: Sweep, counts: dict[str, int] | None = None, *, with_best: bool = True
) -> SweepOut:
    if counts is None:
        counts = sweep_ops.status_counts(session, [sweep.id])[sweep.id]
    best = None
    for metric in ("val_loss", "train_loss") if with_best else ():
        board = sweep_ops.leaderboard(session, sweep.id, sweep_ops.LeaderboardQuery(metric=metric))
        if board and board[0]["mean"] is not None:
            best = LeaderboardRow(**board[0])
            break
    return SweepOut(
        id=sweep.id,
        name=sweep.name,
        created_at=sweep.created_at,
        n_jobs=sweep.n_jobs,
        counts=counts,
        done=counts["queued"] + counts["running"] == 0,
        best=best,
        template=sweep.template,
        search=sweep.search,
        execution=sweep.execution,
    )


def _invalid_combinations(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failing combination (up to 10) with its fields, as 422 detail; nothing was created."""
    return [
        {
            "loc": ["body", "search"],
            "field": error["field"],
            "combination": problem["combination"],
            "msg": f"combination {json.dumps(problem['combination'], sort_keys=True)}: {error['field']}: {error['msg']}",
            "type": "invalid_combination",
        }
        for problem in problems
        for error in problem["errors"]
    ]


@cache
def _catalog() -> dict[str, list[dict[str, Any]]]:
    return engine_catalog()


def _cap_problems(spec: JobSpec, settings: Settings) -> list[tuple[tuple[str, ...], str]]:
    """The server's resource caps, as (location, message) pairs like any other field error."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if spec.epochs > settings.max_epochs:
        problems.append((("epochs",), f"{spec.epochs} exceeds this server's cap of {settings.max_epochs}"))
    if spec.batch_size > settings.max_batch_size:
        problems.append((("batch_size",), f"{spec.batch_size} exceeds this server's cap of {settings.max_batch_size}"))
    n_samples = getattr(getattr(spec.dataset, "params", None), "n_samples", None)
    if n_samples is not None and n_samples > settings.max_samples:
        msg = f"{n_samples} exceeds this server's cap of {settings.max_samples}"
        problems.append((("dataset", "params", "n_samples"), msg))
    params = getattr(spec.model, "params", None)
    widths = [getattr(params, "width", None), getattr(params, "hidden", None), *getattr(params, "channels", [])]
    widest = max((w for w in widths if isinstance(w, int)), default=0)
    if widest > settings.max_model_width:
        msg = f"width {widest} exceeds this server's cap of {settings.max_model_width}"
        problems.append((("model", "params"), msg))
    return problems


def _check_caps(spec: JobSpec, settings: Settings) -> None:
    problems = _cap_problems(spec, settings)
    if problems:
        raise RequestValidationError(
            [{"loc": ("body", "spec", *loc), "msg": msg, "type": "resource_cap"} for loc, msg in problems]
        )


# --- errors ----------------------------------------------------------------------------------

_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z_]+)*): (.*)$", re.S)


def _validation_detail(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors as {loc, field, msg, type}; a cross-field error's "field: message" prefix
    (the spec's model validators name the field that way) becomes part of its location."""
    detail = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", ""))
        match = _FIELD_PREFIX.match(msg)
        if match and error.get("type") == "value_error":
            loc += match.group(1).split(".")
            msg = match.group(2)
        msg = msg.removeprefix("Value error, ")
        field = ".".join(part for part in loc if part != "body")
        detail.append({"loc": loc, "field": field, "msg": msg, "type": str(error.get("type", "invalid"))})
    return detail


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OptimlabError)
    async def _domain(_request: Request, exc: OptimlabError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(SweepInvalid)
    async def _invalid_sweep(_request: Request, exc: SweepInvalid) -> JSONResponse:
        return JSONResponse(
            {"error": "invalid_request", "detail": _invalid_combinations(exc.problems)}, status_code=422
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": _validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": "http_error", "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            log.warning("database unavailable: %s", exc.orig)
            detail = "The database is unreachable; nothing was changed. Retry later."
            return JSONResponse({"error": "database_unavailable", "detail": detail}, status_code=503)
        log.exception("database error")
        return JSONResponse({"error": "internal", "detail": "A database error occurred"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": "internal", "detail": type(exc).__name__}, status_code=500)
