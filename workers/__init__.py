"""Celery workers: the app, the ``workers.run_job`` task and GPU assignment."""
