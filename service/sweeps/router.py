"""/v1/sweeps: create a sweep of jobs from a base spec and a search, follow it, rank its
configurations, read its curves in bulk, cancel it."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service import longpoll
from service.deps import DispatcherDep, IdempotencyKey, PrincipalDep, SessionDep, SettingsDep
from service.responses import validated_response
from service.schemas import Id, Text, error_responses, replayed
from service.sweeps import service as sweep_service
from service.sweeps.schemas import Leaderboard, MetricColumns, SweepCreate, SweepOut, SweepPage, SweepTrials

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

METRIC_PATTERN = f"^({'|'.join(sweep_service.LEADERBOARD_METRICS)})$"


@router.post("", status_code=201, response_model=SweepOut, responses=error_responses(409) | replayed(SweepOut, "sweep"))
def create_sweep(
    body: SweepCreate,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idempotency_key: IdempotencyKey = None,
) -> SweepOut:
    """Expand a base spec and a search (grid, random, seeds) into jobs. Every expansion is
    validated first: one invalid combination rejects the sweep (422, naming it) and nothing
    is created. The jobs are created queued in one transaction and sent after it commits.

    An adaptive search (`strategy` tpe, cmaes, gp, qmc, or random with a `space`) is created with
    its first `parallelism` trials (each a configuration x `seeds`); its controller creates the
    rest as results come in, up to `budget` trials. A configuration that is no valid spec is a
    failed trial without jobs; when every first trial is one, the sweep is a 422 instead."""
    sweep, created = sweep_service.create_sweep(
        session, body, principal=principal, settings=settings, dispatcher=dispatcher, idempotency_key=idempotency_key
    )
    response.status_code = 201 if created else 200
    return sweep_service.describe(session, sweep)


@router.get("")
def list_sweeps(
    session: SessionDep,
    principal: PrincipalDep,
    owner: Annotated[
        Text | None, Query(max_length=64, description="Admins: only this owner's ('' : created with auth off).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> SweepPage:
    """Your sweeps (an admin's: everyone's), newest first, with their counts (`best` is on GET
    /v1/sweeps/{id})."""
    return sweep_service.list_sweeps(session, principal, owner=owner, limit=limit, cursor=cursor)


@router.get("/{sweep_id}", responses=error_responses(404) | longpoll.ETAG_HEADER)
async def get_sweep(
    sweep_id: Id,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    wait_s: longpoll.WaitSeconds = 0,
    since: longpoll.Since = None,
    until: longpoll.Until = "change",
    best: Annotated[
        bool, Query(description="Include `best` (it computes the leaderboard); false: `best` is null.")
    ] = True,
) -> SweepOut:
    """Counts per status and the best configuration so far.

    Long-poll: with `since` (an earlier answer's `state_token`) and `wait_s`, the answer waits
    until the counts per status differ from that answer's (a job started or finished), or
    `wait_s` seconds pass; it comes at once if they already differ. Either way it is a 200 with
    the sweep as it is then, its `state_token` also in the `ETag` header. With `until=done`, it
    waits until no job is queued or running instead (no `since` needed)."""
    watch = partial(sweep_service.watch, session, sweep_id, principal)
    scope = ("sweep", sweep_id)
    await longpoll.hold(request, settings, watch, scope=scope, since=since, wait_s=wait_s, until=until)
    sweep = await run_in_threadpool(sweep_service.get_sweep, session, sweep_id, principal, with_best=best)
    response.headers["ETag"] = longpoll.etag(sweep.state_token)
    return sweep


@router.post("/{sweep_id}/cancel", responses=error_responses(404))
def cancel_sweep(sweep_id: Id, session: SessionDep, principal: PrincipalDep) -> SweepOut:
    """Queued jobs never run; running ones stop at their next epoch boundary; finished ones stay.
    Cancelling again answers the sweep as it is."""
    return sweep_service.cancel_sweep(session, sweep_id, principal)


@router.get("/{sweep_id}/trials", responses=error_responses(404))
def trials(sweep_id: Id, session: SessionDep, principal: PrincipalDep) -> SweepTrials:
    """Every trial of an adaptive sweep, by number: its params, state, value (the objective's mean
    over its seeds), intermediate values (per epoch) and job ids, with the sweep's space and
    objective; what the controller tells Optuna, and what `client.study()` rebuilds. A grid or
    random sweep has none."""
    return sweep_service.trials(session, sweep_id, principal)


@router.get("/{sweep_id}/leaderboard", responses=error_responses(404))
def leaderboard(
    sweep_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    metric: Annotated[str, Query(pattern=METRIC_PATTERN)] = "val_loss",
    mode: Annotated[str | None, Query(pattern="^(min|max)$", description="Default: min for losses")] = None,
    which: Annotated[str, Query(pattern="^(best|final)$", description="Best epoch's value or final")] = "best",
) -> Leaderboard:
    """Configurations ranked by the mean of the metric over seeds, with std, 95% CI, min,
    max, diverged count and mean wall time; computed in SQL from the jobs' summaries."""
    return sweep_service.leaderboard(session, sweep_id, principal, metric=metric, mode=mode, which=which)


@router.get(
    "/{sweep_id}/metrics",
    responses=error_responses(404)
    | {
        200: {
            "content": {"text/csv": {}},
            "description": "Columnar JSON, or CSV with ?format=csv",
            "headers": {"ETag": {"description": "A finished sweep's: strong", "schema": {"type": "string"}}},
        },
        304: {"description": "Not Modified: a finished sweep's curves, and If-None-Match names their ETag"},
    },
)
def sweep_metrics(
    sweep_id: Id,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    columns: Annotated[MetricColumns, Query()] = "train_loss,val_loss",
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
    if_none_match: Annotated[str | None, Header(max_length=4096, description="ETags of bodies you have")] = None,
) -> Response:
    """Every job's per-epoch rows in one response: JSON `{"sweep_id": ..., "columns": [...],
    "rows": [[job_id, epoch, ...], ...], "jobs": [...]}` (each job's config, seed and status, to
    label curves). A finished sweep's (no job queued or running) never change: they carry a
    strong ETag, and If-None-Match naming it is a 304. A large sweep's arrive as a stream."""
    curves = sweep_service.sweep_metrics(
        session, sweep_id, principal, columns, settings=settings, as_csv=format == "csv", if_none_match=if_none_match
    )
    return validated_response(curves.content, media_type=curves.media_type, etag=curves.etag)
