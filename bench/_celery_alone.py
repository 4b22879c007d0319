"""Celery alone, for ``bench/separate_overhead.py``: optimlab's Celery settings and embedded broker
(``service.broker.celery_config``), one task that trains a spec with the engine and writes its
final val_loss to a file. No database, no API: what one task per trial costs through Celery.

    OPTIMLAB_HOME=DIR python -m celery -A _celery_alone worker -P solo -c 1 -Q cpu   (from bench/)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery
from celery.signals import worker_ready

from service.broker import celery_config
from service.settings import get_settings

TASK = "bench.train"


def make_app() -> Celery:
    """The app on the current settings (``OPTIMLAB_HOME`` names the broker folders)."""
    get_settings.cache_clear()
    app = Celery("celery_alone")
    app.conf.update(celery_config(get_settings()))
    return app


app = make_app()


def results(home: Path) -> Path:
    folder = home / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@app.task(name=TASK)
def train(spec: dict[str, Any], name: str) -> None:
    """Train ``spec``; write its final val_loss to ``results/NAME`` (atomically: a rename)."""
    from optim_engine import train as train_spec

    result = train_spec(spec, num_threads=1)
    folder = results(get_settings().home)
    (folder / f".{name}").write_text(json.dumps(result.history[-1].val_loss))
    os.replace(folder / f".{name}", folder / name)


@worker_ready.connect
def _warm(**_: Any) -> None:
    """Train once before saying so, as an optimlab worker warms up: imports, dataset, first optimizer."""
    import sweep_vs_optuna

    sweep_vs_optuna.warm_this_process(sweep_vs_optuna.Workload(1, 64))
    print("celery alone: ready.", flush=True)
