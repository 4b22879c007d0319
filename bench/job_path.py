"""What the worker's job path costs a separate job over its training, side by side in one process.

The 60 trials of ``bench/sweep_vs_optuna.py`` (digits MLP 64-128-10, 15 epochs, 12 optimizer
settings x 5 seeds; one torch thread) run (1) through ``optim_engine.train_trials`` alone and
(2) through ``workers.run.execute``, one job per call as a Celery task runs it: the claim, the
heartbeat and epoch-writer loops, the epoch rows, the final UPDATE and its commit, against a fresh
SQLite database. Each trial runs both ways back to back (the order alternating), so the machine's
drift cancels; rounds use new seeds. Printed: the medians per job, and the median of the
per-trial differences, which the last line gives: ``job path overhead per job: <ms> ms (<x>% of a <ms> ms job)``.

No Celery, no API, no other process: this is the floor of what ``execution="separate"`` adds per
trial (``bench/separate_overhead.py`` measures the whole service, noise and all).

    python bench/job_path.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import _harness  # noqa: F401  (puts the project root on sys.path)
from sweep_vs_optuna import Workload, seeds_of

from service.db.migrate import upgrade
from service.db.session import make_engine, make_session_factory
from service.settings import Settings
from service.spec_codec import load_spec
from tests.factories import insert_job
from workers.run import execute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    from optim_engine import train_trials

    torch.set_num_threads(1)
    work = Workload(15, 64)
    with tempfile.TemporaryDirectory(prefix="optimlab-job-path-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'optimlab.db'}"
        upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        settings = Settings(home=Path(tmp) / "home", database_url=url, reaper_interval_s=0, torch_threads=1)

        def engine_alone(spec: dict) -> float:
            started = time.perf_counter()
            train_trials([load_spec(spec)], keys=["x"], packed=False, num_threads=1)
            return time.perf_counter() - started

        def job_path(spec: dict) -> float:
            with sessions() as session, session.begin():
                job_id = insert_job(session, spec)
            started = time.perf_counter()
            assert execute([job_id], sessions, settings) == "succeeded=1"
            return time.perf_counter() - started

        for spec in work.specs([1000])[:6]:  # warm: imports, the dataset, the statements, the helpers
            job_path(spec)
            engine_alone(spec)
        alone: list[float] = []
        path: list[float] = []
        for index in range(args.rounds):
            for n, spec in enumerate(work.specs(seeds_of(index))):
                if n % 2 == 0:
                    alone.append(engine_alone(spec))
                    path.append(job_path(spec))
                else:
                    path.append(job_path(spec))
                    alone.append(engine_alone(spec))
            print(
                f"round {index + 1}: engine alone {statistics.median(alone[-60:]) * 1000:.1f} ms, "
                f"job path {statistics.median(path[-60:]) * 1000:.1f} ms per job (medians)",
                flush=True,
            )
        engine.dispose()
    base, full = statistics.median(alone) * 1000, statistics.median(path) * 1000
    paired = statistics.median((p - a) * 1000 for a, p in zip(alone, path, strict=True))
    print(
        f"median per job: engine alone {base:.1f} ms, job path {full:.1f} ms; of the paired differences: {paired:.2f} ms"
    )
    print(f"job path overhead per job: {paired:.2f} ms ({paired / base * 100:.1f}% of a {base:.0f} ms job)")


if __name__ == "__main__":
    main()
