"""The Celery side of the API process: the app's configuration and enqueueing by task name.

The API never imports the worker's task code (which imports torch); it sends ``workers.run``
by name (through the dispatcher, ``service.dispatcher``). Workers build their Celery app from the same function, so both agree on queues,
serialization and broker options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from service import embedded_broker
from service.settings import Settings

RUN = "workers.run"
# The task names before one job path; workers still run messages sent under them.
LEGACY_RUN_JOB = "workers.run_job"
LEGACY_RUN_PACK = "workers.run_pack"
QUEUES = ("gpu", "cpu")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long training jobs: a lost worker's task is delivered again, never dropped."""
    options: dict[str, Any]
    if settings.embedded:
        folder = settings.broker_folder()
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        broker = f"{embedded_broker.SCHEME}://"  # kombu's filesystem transport, writing atomically
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "polling_interval": settings.broker_polling_interval_s,  # kombu's default 1 s costs ~1 s per job
        }
    else:
        assert settings.broker_url is not None
        broker = settings.broker_url
        options = {
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu sweeps unacked messages back only every ~100 s by default.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": settings.unacked_restore_interval_s,
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        }
    return {
        "broker_url": broker,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": "cpu",
        "task_create_missing_queues": False,  # a typo in a queue name fails loudly
        "task_acks_late": True,  # ack after the job ran: a worker that dies mid-job leaves it to redeliver
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,  # one job at a time per process; no job waits behind another
        "task_ignore_result": True,  # the database is the record
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.25,
            "interval_max": 0.5,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_heartbeat": 0,
    }


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    app = Celery("optimlab", include=include or [])
    app.conf.update(celery_config(settings))
    return app


def queue_for(device: str, settings: Settings) -> str:
    """``cuda``/``cuda:N`` → gpu, ``cpu`` → cpu, ``mps`` → cpu (a laptop's worker), ``auto`` → setting."""
    if device.startswith("cuda"):
        return "gpu"
    if device == "auto":
        return settings.auto_device_queue
    return "cpu"


def send(app: Celery, job_ids: Sequence[int], queue: str) -> None:
    """Send ``workers.run(job_ids)`` (jobs that train together, or one job) to ``queue``; raises
    kombu/redis errors when the broker is down. Only the dispatcher calls this."""
    app.send_task(RUN, args=[list(job_ids)], queue=queue, routing_key=queue)


def broker_reachable(app: Celery, timeout: int = 2) -> bool:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception:
        return False
    return True


MARKER = "optimlab:messages-kept"
"""A key the dispatcher keeps in Redis: gone means Redis lost its data (restarted without
persistence, flushed) and with it every message it held."""


def _redis(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.broker_url or "", socket_connect_timeout=2, socket_timeout=2)


def messages_lost(settings: Settings) -> bool:
    """True when the broker lost the messages it held since ``mark_messages_kept`` last ran (also
    the first time: a resend is harmless); False when it kept them, when it is unreachable (nothing
    to conclude yet) or when it is not Redis."""
    if not (settings.broker_url or "").startswith(("redis://", "rediss://")):
        return False
    import redis

    try:
        with _redis(settings) as client:
            return not client.exists(MARKER)
    except (redis.RedisError, OSError):
        return False


def mark_messages_kept(settings: Settings) -> None:
    """Set the marker once the jobs whose messages were lost are unsent again."""
    import redis

    try:
        with _redis(settings) as client:
            client.set(MARKER, "1")
    except (redis.RedisError, OSError):
        pass  # checked again on the next pass
