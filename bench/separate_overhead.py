"""What one task per trial costs: ``execution="separate"`` against a bare process pool, with Celery
alone between them, so the overhead splits into what Celery costs and what optimlab adds.

The workload and the two processes x one torch thread are ``bench/sweep_vs_optuna.py``'s (60 trials
of a digits MLP, 15 epochs, about 70 ms each here). Arms, alternated over rounds, each on the same
seeds in a round (a new block per round, so the service's result cache never answers one):
  pool            ``multiprocessing`` Pool(2), forked after training once, results in memory
  celery alone    two solo Celery workers on optimlab's Celery settings and embedded broker
                  (``bench/_celery_alone.py``), warmed like optimlab's; one task per trial that
                  trains with the engine and writes its loss to a file; no database, no API
  optimlab        ``optimlab up --workers 2`` (SQLite, the filesystem broker), warm; the sweep with
                  ``execution="separate"``: per trial its claim, its epoch rows and final status
                  in the database, and ``Client.wait`` long-polling the API
Each is timed from handing over the 60 trials to knowing all results. Printed: per round, then
medians, each arm over the pool, and the overhead per trial and worker process over the pool;
the last line: ``optimlab separate vs pool: <x>x (celery alone <y>x)``.

    python bench/separate_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from sweep_vs_optuna import PROCESSES, Workload, optimlab_service, run_pool, run_sweep, seeds_of, warm_this_process

BENCH = Path(__file__).resolve().parent
POOL, CELERY, OPTIMLAB = "pool", "celery alone", "optimlab separate"
ARMS = (POOL, CELERY, OPTIMLAB)


def celery_workers(stack: ExitStack, home: Path) -> None:
    """PROCESSES solo Celery workers of ``_celery_alone`` with their state in ``home``, once each
    has trained its warm-up run."""
    from _harness import service_env

    home.mkdir(parents=True)
    env = service_env(OPTIMLAB_HOME=str(home), OPTIMLAB_TORCH_THREADS="1", PYTHONPATH=str(BENCH))
    log = home / "workers.log"
    out = stack.enter_context(log.open("wb"))
    for i in range(PROCESSES):
        command = [sys.executable, "-m", "celery", "-A", "_celery_alone", "worker", "-P", "solo", "-c", "1"]
        command += ["-Q", "cpu", "-n", f"alone{i}@%h", "-l", "info"]
        proc = subprocess.Popen(command, cwd=BENCH, env=env, stdout=out, stderr=subprocess.STDOUT)
        stack.callback(proc.wait)
        stack.callback(proc.terminate)
    deadline = time.monotonic() + 120
    while log.read_bytes().count(b"celery alone: ready.") < PROCESSES:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Celery workers did not start; see {log}")
        time.sleep(0.05)


def run_celery(home: Path, work: Workload, seeds: list[int]) -> float:
    """Send one task per trial, then wait (10 ms polls of the results folder) for all of them."""
    from _celery_alone import TASK, make_app, results

    app = make_app()
    specs = work.specs(seeds)
    folder = results(home)
    started = time.perf_counter()
    for i, spec in enumerate(specs):
        app.send_task(TASK, args=[spec, str(i)], queue="cpu", routing_key="cpu")
    while sum(not name.startswith(".") for name in os.listdir(folder)) < len(specs):  # renamed into place
        time.sleep(0.01)
    return time.perf_counter() - started


def celery_round(home: Path, work: Workload, seeds: list[int]) -> float:
    """Fresh Celery workers (nothing else of an arm runs while another arm is timed), warmed, then
    the trials; the workers stop after."""
    os.environ["OPTIMLAB_HOME"] = str(home)  # this process sends to the workers' broker folders
    with ExitStack() as stack:
        celery_workers(stack, home)
        return run_celery(home, work, seeds)


def optimlab_round(home: Path, work: Workload, seeds: list[int]) -> float:
    """A fresh ``optimlab up``, warmed by a first separate sweep on other seeds, then the timed one."""
    with optimlab_service(home, "up") as client:
        run_sweep(client, "warm-up", work, [1000 + seed for seed in seeds], "separate")
        return run_sweep(client, OPTIMLAB, work, seeds, "separate").seconds


def run_arm(arm: str, home: Path, work: Workload, seeds: list[int]) -> float:
    """One arm's wall seconds for the trials of ``seeds``, its state (if any) in ``home``."""
    if arm == POOL:
        return run_pool(work, seeds).seconds
    if arm == CELERY:
        return celery_round(home, work, seeds)
    return optimlab_round(home, work, seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Workload(15, 64)
    print(
        f"60 trials (digits MLP 64-128-10, {work.epochs} epochs), {PROCESSES} processes x 1 torch thread; "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.2f} at start)",
        flush=True,
    )
    warm_this_process(work)
    seconds: dict[str, list[float]] = {POOL: [], CELERY: [], OPTIMLAB: []}
    with tempfile.TemporaryDirectory(prefix="optimlab-separate-") as tmp:
        for index in range(args.rounds):
            for arm in ARMS[index % 3 :] + ARMS[: index % 3]:
                seconds[arm].append(run_arm(arm, Path(tmp) / f"{arm}-{index}", work, seeds_of(index)))
            print(f"round {index + 1}: " + ", ".join(f"{arm} {seconds[arm][-1]:.2f} s" for arm in ARMS), flush=True)
    medians = {arm: statistics.median(values) for arm, values in seconds.items()}
    per_worker = len(work.specs(seeds_of(0))) / PROCESSES
    print(f"{'arm':<18} {'median s':>9} {'min':>6} {'max':>6} {'arm/pool':>9} {'ms per trial over the pool':>27}")
    for arm, values in seconds.items():
        extra_ms = (medians[arm] - medians[POOL]) / per_worker * 1000
        print(
            f"{arm:<18} {medians[arm]:>9.2f} {min(values):>6.2f} {max(values):>6.2f} "
            f"{medians[arm] / medians[POOL]:>8.3f}x {extra_ms:>27.1f}"
        )
    print(
        f"optimlab separate vs pool: {medians[OPTIMLAB] / medians[POOL]:.3f}x "
        f"(celery alone {medians[CELERY] / medians[POOL]:.3f}x)"
    )


if __name__ == "__main__":
    main()
