"""The one job path on a worker: claim 1..N jobs, train them together, persist every epoch.

A job is a pack of one: a separate job and a sweep's pack go through the same claim, heartbeat,
writer, finish and resume. ``execute`` is a plain function of job ids and a session factory, so
tests and the embedded runner call the exact code Celery calls.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service import events
from service.db import transitions
from service.db.models import Job, JobStatus
from service.settings import Settings
from service.spec_codec import load_spec
from workers import shutdown
from workers.app import GPUS_ENV, wait_for_datasets, wait_for_torch
from workers.database import DatabaseLost, with_db
from workers.pruning import Pruning, pruning_for
from workers.writer import OUTCOME_STATUS, RELEASED, Attempts, Writer, finish_details, in_background

log = logging.getLogger("optimlab.worker")

STOP_POLL_S = 0.2
"""How often training asks whether to stop (at most; ``OPTIMLAB_STOP_WITHIN_S / 4`` when less):
the answer is a memory read (``Attempts.stopping``: the shutdown flag, the flags the heartbeat
thread keeps fresh), so asking often costs nothing and a shutdown is seen within this long."""


def execute(job_ids: list[int], sessions: sessionmaker[Session], settings: Settings) -> str:
    """Run the claimable jobs of ``job_ids`` to terminal statuses; returns a summary such as
    ``"succeeded=3 diverged=1"``, or ``"skipped"`` when none was claimable (finished, cancelled,
    or owned by a live worker: redelivered and duplicate tasks end here). A worker shutdown hands
    the jobs back (``released``); ``lost`` counts jobs another attempt took over.

    Raises ``DatabaseLost`` when the claim itself could not be made: the caller must not
    acknowledge the task away.
    """
    worker = transitions.worker_name()
    claim = partial(transitions.claim, job_ids=job_ids, worker=worker, stale_after_s=settings.stale_after_s)
    claims = with_db(sessions, claim, settings.database_retry_s)
    if not claims:
        log.info("jobs %s: not claimable (finished, cancelled, missing or owned by a live worker)", job_ids)
        return "skipped"
    fresh_s = settings.stop_within_s / 2
    attempts = Attempts(claims, sessions, settings.database_retry_s, worker=worker, fresh_s=fresh_s)
    attempts.tell(events.STARTED, [c.job_id for c in claims])
    pack_id = claims[0].pack_id
    log.info("jobs %s: starting (%s)", [c.job_id for c in claims], f"pack {pack_id}" if pack_id else "alone")
    checkpoint_dir = settings.resolved_checkpoint_dir() / (f"pack-{pack_id}" if pack_id else str(claims[0].job_id))
    try:
        with _beating(attempts, settings.heartbeat_interval_s, settings.stop_within_s / 4):
            statuses = _train(claims, attempts, settings, checkpoint_dir)
    except DatabaseLost as exc:
        log.error("jobs %s: %s; leaving them to be requeued", sorted(attempts.live()), exc)
        return "database_lost"
    lost = attempts.lost()
    if lost:
        log.warning("jobs %s lost ownership; they wrote no result", lost)
    released = sorted(job_id for job_id, status in statuses.items() if status == RELEASED)
    if released:
        log.info(
            "jobs %s handed back to the queue (worker shutting down); they resume from their last checkpoint", released
        )
    if not settings.keep_checkpoints and _checkpoint_done(claims, statuses, sessions, settings):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    counts = Counter(statuses.values()) + Counter({"lost": len(lost)} if lost else {})
    return " ".join(f"{name}={n}" for name, n in sorted(counts.items()))


def _checkpoint_done(
    claims: list[transitions.Claim], statuses: dict[int, str], sessions: sessionmaker[Session], settings: Settings
) -> bool:
    """Whether the task's checkpoint folder may go: this attempt wrote the final status of every
    job it claimed (none lost, none handed back to resume from it), and no other job of its pack
    is still queued or running elsewhere (it would resume from the same folder)."""
    if any(statuses.get(c.job_id) in (None, RELEASED) for c in claims):
        return False
    pack_id = claims[0].pack_id
    if pack_id is None:
        return True
    unfinished = select(func.count()).where(
        Job.pack_id == pack_id, Job.status.in_([JobStatus.queued, JobStatus.running])
    )
    try:
        return with_db(sessions, lambda session: session.scalar(unfinished) == 0, settings.database_retry_s)
    except DatabaseLost:
        return False


@contextmanager
def _beating(attempts: Attempts, interval: float, poll_s: float) -> Iterator[None]:
    """Heartbeat the task's jobs (and read their flags every ``poll_s``) on a helper thread
    (``workers.writer.in_background``) for the duration of the block.

    The thread is told to stop, not joined: it ends at its next wake-up, and by then every job
    of the task is finished or handed back, so it writes nothing (its UPDATEs only match jobs
    this attempt still runs). Joining cost a short job ~2 ms of waiting for the thread to be
    scheduled on a busy machine."""
    stop = threading.Event()
    in_background("heartbeat", partial(attempts.heartbeat, interval, poll_s, stop))
    try:
        yield
    finally:
        stop.set()


def _train(claims: list[transitions.Claim], attempts: Attempts, settings: Settings, ckpt: Path) -> dict[int, str]:
    wait_for_torch()
    from optim_engine import resolve_device, train_trials  # torch is imported here, in the worker only
    from optim_engine._bundled import needs_sklearn

    specs, job_ids, statuses = _trainable(claims, attempts)
    if not specs:
        return statuses
    if any(needs_sklearn(spec.dataset) for spec in specs):
        wait_for_datasets()  # the warm-up may still be importing scikit-learn
    device: str | None = None
    failure: Exception | None = None
    try:
        device = str(resolve_device(specs[0].device))
    except Exception as exc:  # raised again below, so every job fails with it (named once)
        failure = exc
    writer = Writer(attempts, settings.metrics_flush_s, device)
    writer.start()
    pruning = _pruning(claims, job_ids, specs, attempts, settings, writer) if failure is None else None

    def on_epoch(i: int, metrics: Any) -> None:
        writer.submit(job_ids[i], metrics.as_dict())
        if pruning is not None:
            pruning.on_epoch(i, metrics)

    def on_finish(i: int, result: Any) -> None:
        job_id = job_ids[i]
        if result.outcome == "cancelled" and shutdown.requested() and not attempts.jobs[job_id].cancel_requested:
            log.info("job %s: handing back at epoch %s/%s", job_id, len(result.history), specs[i].epochs)
            writer.hand_back(job_id, **finish_details(result))
        else:
            writer.finish(job_id, OUTCOME_STATUS[result.outcome], **finish_details(result))

    try:
        if failure is not None:
            raise failure
        train_trials(
            specs,
            keys=[str(job_id) for job_id in job_ids],
            packed=claims[0].pack_id is not None,
            on_epoch=on_epoch,
            on_finish=on_finish,
            should_prune=pruning.should_prune if pruning is not None else None,
            should_stop=partial(attempts.stopping, job_ids),
            checkpoint_dir=ckpt,
            checkpoint_every_s=settings.checkpoint_every_s,
            num_threads=settings.torch_threads,
            stop_poll_s=min(settings.stop_within_s / 4, STOP_POLL_S),
            stop_grace_s=settings.stop_within_s / 5,  # a stop waits that long for the epoch's end
            may_checkpoint=attempts.may_checkpoint,
        )
    except Exception as exc:
        log.exception("jobs %s failed", job_ids)
        writer.fail_unfinished(job_ids, f"{type(exc).__name__}: {exc}")
    writer.close()
    if attempts.database_error is not None:
        raise attempts.database_error
    return statuses | writer.statuses


def _pruning(
    claims: list[transitions.Claim],
    job_ids: list[int],
    specs: list[Any],
    attempts: Attempts,
    settings: Settings,
    writer: Writer,
) -> Pruning | None:
    """The pruning hook when the task's jobs are trials of one adaptive sweep with a pruner."""
    by_id = {c.job_id: c for c in claims}
    trials = [by_id[j].trial_number for j in job_ids]
    sweeps = {by_id[j].sweep_id for j in job_ids}
    if not job_ids or len(sweeps) != 1 or None in sweeps or any(t is None for t in trials):
        return None
    (sweep_id,) = sweeps
    assert sweep_id is not None
    try:
        return pruning_for(
            attempts.sessions,
            sweep_id,
            [t for t in trials if t is not None],
            job_ids,
            specs,
            refresh_s=settings.prune_refresh_s,
            set_attrs=writer.set_attrs,
        )
    except DatabaseLost as exc:
        log.warning("jobs %s: training without pruning (%s)", job_ids, exc)
        return None


def _trainable(claims: list[transitions.Claim], attempts: Attempts) -> tuple[list[Any], list[int], dict[int, str]]:
    """The claimed specs this host can train (device pinned to this process's GPU), their job
    ids, and the failed status of those it cannot (their data vanished, an extra is missing)."""
    from optim_engine.spec import host_problems

    specs, job_ids, failed = [], [], {}
    for claim in claims:
        try:
            spec = load_spec(claim.spec)
            problems = host_problems(spec)
        except Exception as exc:  # the spec validated at submission; the code may have changed since
            problems = [((), f"{type(exc).__name__}: {exc}")]
        if not problems:
            specs.append(spec.model_copy(update={"device": pinned(spec.device)}))
            job_ids.append(claim.job_id)
            continue
        error = "spec: " + "; ".join(f"{'.'.join(loc)}: {msg}" if loc else msg for loc, msg in problems)
        log.error("job %s: %s", claim.job_id, error)
        finish = partial(transitions.finish, job_id=claim.job_id, attempt=claim.attempt, status=JobStatus.failed)
        if with_db(
            attempts.sessions,
            partial(finish, error=error, wall_seconds=attempts.walls([claim.job_id])[claim.job_id]),
            attempts.budget_s,
        ):
            failed[claim.job_id] = str(JobStatus.failed)
            attempts.tell(events.FINISHED, [claim.job_id])
        attempts.jobs[claim.job_id].finished = True  # out of this task either way: no more heartbeats
    return specs, job_ids, failed


def pinned(device: str) -> str:
    """In a pool whose children own one GPU each, ``cuda:N`` means this child's GPU."""
    if os.environ.get(GPUS_ENV) and device.startswith("cuda"):
        return "cuda"
    return device
