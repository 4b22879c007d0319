"""Operator metrics: ``GET /metrics`` in Prometheus' text format.

What the database records (jobs by state and queue, the queue's depth, sweeps, epochs trained,
each worker's recent epochs and throughput) is read at scrape time by ``DatabaseCollector``, so
every API replica reports the same fresh numbers and workers, separate processes, need no
exporter of their own. What only this process sees is kept in it: request latency per route
template (``RequestMetrics``) and the dispatcher's actions (``DISPATCHER``, counted in
``service.dispatcher``). Labels never carry an owner, a job id or a raw path.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import service as auth_service
from service.broker import QUEUES
from service.db.epochs import EPOCHS
from service.db.models import Job, JobStatus, Sweep

log = logging.getLogger("optimlab.metrics")

WINDOW_S = 60.0
"""The per-worker rates cover the epochs recorded in this many seconds before the scrape."""

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' text format, which every Prometheus version reads (names here need no escaping)."""

UNMATCHED = "unmatched"
"""The route label of a request no route served (a 404, a body refused before routing)."""

DISPATCHER = CollectorRegistry()
"""The dispatcher's counters: per process (each API replica dispatches), shared by every app in it."""

JOBS_SENT = Counter("optimlab_dispatcher_jobs_sent", "Jobs the dispatcher sent to the broker.", registry=DISPATCHER)
SEND_FAILURES = Counter(
    "optimlab_dispatcher_send_failures", "Dispatcher passes a broker error cut short.", registry=DISPATCHER
)
REQUEUED = Counter(
    "optimlab_reaper_jobs_requeued",
    "Jobs made unsent again: stale_heartbeat (a dead worker's), stalled_message (queued too long, "
    "embedded broker), lost_messages (a restarted broker lost them).",
    ["reason"],
    registry=DISPATCHER,
)


def count_requeued(requeued: dict[str, int]) -> None:
    """Count a committed recovery pass's requeued jobs by reason."""
    for reason, n in requeued.items():
        if n:
            REQUEUED.labels(reason=reason).inc(n)


class DatabaseCollector(Collector):
    """The database's numbers at scrape time: three queries (jobs grouped by status, queue and
    sent; epochs of the last ``WINDOW_S`` grouped by worker; sweeps with work in flight). A
    database that cannot answer gives ``optimlab_database_up 0`` and no other family, never a
    failed scrape."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session]], window_s: float = WINDOW_S) -> None:
        self._sessions = sessions
        self._window_s = window_s

    def collect(self) -> Iterator[Metric]:
        try:
            with self._sessions()() as session:
                families = [*self._jobs(session), *self._workers(session), self._sweeps(session)]
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            families = []
        up = GaugeMetricFamily("optimlab_database_up", "Whether the database answered this scrape (1) or not (0).")
        up.add_metric([], 1.0 if families else 0.0)
        yield up
        yield from families

    def _jobs(self, session: Session) -> list[Metric]:
        unsent = Job.enqueued_at.is_(None).label("unsent")
        trained = func.coalesce(func.sum(case((Job.cached_from.is_(None), Job.epochs_done), else_=0)), 0)
        rows = session.execute(
            select(Job.status, Job.queue, unsent, func.count(), trained).group_by(Job.status, Job.queue, unsent)
        ).all()
        queues = sorted(set(QUEUES) | {queue for _, queue, *_ in rows})
        by_state = {(status, queue): 0 for status in JobStatus for queue in queues}
        depth = {(queue, sent): 0 for queue in queues for sent in ("true", "false")}
        epochs = dict.fromkeys(queues, 0)
        for status, queue, is_unsent, n, done in rows:
            by_state[status, queue] = by_state.get((status, queue), 0) + n
            if status == JobStatus.queued:
                depth[queue, "false" if is_unsent else "true"] += n
            epochs[queue] += int(done)
        jobs = GaugeMetricFamily("optimlab_jobs", "Jobs by state and queue.", labels=["state", "queue"])
        for (status, queue), n in sorted(by_state.items()):
            jobs.add_metric([str(status), queue], n)
        queued = GaugeMetricFamily(
            "optimlab_queue_depth",
            "Queued jobs by queue; sent: handed to the broker (false: waiting for the dispatcher).",
            labels=["queue", "sent"],
        )
        for (queue, sent), n in sorted(depth.items()):
            queued.add_metric([queue, sent], n)
        trained_total = CounterMetricFamily(
            "optimlab_epochs_trained",
            "Epochs trained (stored epoch rows of jobs not served from the result cache), by queue.",
            labels=["queue"],
        )
        for queue, n in sorted(epochs.items()):
            trained_total.add_metric([queue], n)
        return [jobs, queued, trained_total]

    def _workers(self, session: Session) -> list[Metric]:
        """Each worker's epochs recorded in the window, read through the jobs that can have
        written one (running, or finished within it): ``epoch_metrics`` has no time index."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._window_s)
        rows = session.execute(
            select(Job.worker, func.count(), func.avg(EPOCHS.c.samples_per_second))
            .join(EPOCHS, EPOCHS.c.job_id == Job.id)
            .where(Job.worker.is_not(None), Job.cached_from.is_(None))
            .where(or_(Job.status == JobStatus.running, Job.finished_at >= cutoff))
            .where(EPOCHS.c.recorded_at >= cutoff)
            .group_by(Job.worker)
        ).all()
        epochs = GaugeMetricFamily(
            "optimlab_worker_epochs_per_second",
            f"Epochs each worker recorded per second over the last {self._window_s:g} s.",
            labels=["worker"],
        )
        samples = GaugeMetricFamily(
            "optimlab_worker_samples_per_second",
            f"Mean training throughput of the epochs each worker recorded in the last {self._window_s:g} s "
            "(per job: a pack's jobs each count).",
            labels=["worker"],
        )
        for worker, n, throughput in rows:
            epochs.add_metric([worker], n / self._window_s)
            samples.add_metric([worker], float(throughput or 0.0))
        return [epochs, samples]

    def _sweeps(self, session: Session) -> Metric:
        in_flight = (Job.status == JobStatus.queued) | (Job.status == JobStatus.running)
        total = session.scalar(select(func.count()).select_from(Sweep)) or 0
        active = session.scalar(select(func.count(Job.sweep_id.distinct())).where(in_flight)) or 0
        sweeps = GaugeMetricFamily(
            "optimlab_sweeps",
            "Sweeps with a job queued or running (active) and the others (idle).",
            labels=["state"],
        )
        sweeps.add_metric(["active"], active)
        sweeps.add_metric(["idle"], max(total - active, 0))
        return sweeps


def request_histogram(registry: CollectorRegistry) -> Histogram:
    """Request latency by method, route template and status class (bounded labels)."""
    return Histogram(
        "optimlab_http_request_duration_seconds",
        "HTTP request latency, by method, route template (never the raw path) and status class.",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    )


class RequestMetrics:
    """ASGI middleware: each HTTP request's duration, until its last body chunk is sent, labelled
    by the template of the route that served it (``/v1/jobs/{job_id}``, read from the scope the
    router filled in) so the series stay bounded whatever paths clients ask for."""

    def __init__(self, app: ASGIApp, *, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            labels = (scope.get("method", ""), route_template(scope), f"{status // 100}xx")
            self.histogram.labels(*labels).observe(time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """The template of the route that served a request (``/v1/jobs/{job_id}``), or ``UNMATCHED``.

    FastAPI may put an included router's route in the scope without the include's prefix
    (``/jobs/{job_id}``), so the prefix is the part of the path before where the route's own
    pattern matches: a literal the router matched, never a client's free text.
    """
    route = scope.get("route")
    template, pattern = getattr(route, "path", None), getattr(route, "path_regex", None)
    if not template or pattern is None:
        return UNMATCHED
    path = str(scope.get("path", ""))
    for cut in (i for i, char in enumerate(path) if char == "/"):
        if pattern.match(path[cut:]):
            return path[:cut] + template
    return template


def authorize(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Who may scrape: anyone with auth off or ``metrics_public``; otherwise an admin key (the
    numbers span every owner, though they name none)."""
    settings = request.app.state.settings
    if settings.auth != "keys" or settings.metrics_public:
        return
    with request.app.state.read_session_factory() as session:
        principal = auth_service.authenticate(session, settings, credentials.credentials if credentials else None)
    if not principal.admin:
        raise auth_service.Forbidden("GET /metrics needs an admin key (or OPTIMLAB_METRICS_PUBLIC=true)")


router = APIRouter()
bearer = HTTPBearer(auto_error=False)  # a missing key is ``authorize``'s 401, not HTTPBearer's 403


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Any:
    """The app's registry (database collector, request latency) and the dispatcher's counters."""
    authorize(request, credentials)
    body = generate_latest(request.app.state.metrics_registry) + generate_latest(DISPATCHER)
    return Response(body, media_type=TEXT_FORMAT)


def install(app: FastAPI) -> None:
    """Give ``app`` its registry (the database collector reads the session factory its lifespan
    makes), the latency middleware (outermost, so refused bodies count) and ``GET /metrics``."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(lambda: app.state.read_session_factory))
    app.state.metrics_registry = registry
    app.add_middleware(RequestMetrics, histogram=request_histogram(registry))
    app.include_router(router)
