"""One 60-trial sweep, side by side: optimlab (packed on cold and warm workers, separate), Optuna
and a bare process pool. "How long until I see which optimizer won?"

Workload: scikit-learn's digits, MLP 64-128-10, cross_entropy, batch 64, 15 epochs; 12 optimizer
settings (SGD, SGD + momentum 0.9, Adam, RMSprop, each at 3 learning rates) x 5 seeds = 60 trials;
two processes x one torch thread in every arm. Every arm trains with the same code,
``optim_engine.train`` (or its packed loop, which holds to it within float32 drift), so the
differences measure orchestration, storage and start-up, not training loops.

Arms (wall time; every arm must end with all 60 trials succeeded):
  optimlab packed (cold)    a fresh ``optimlab up --workers 2`` (``--service worker``: ``optimlab
                            api`` + ``optimlab worker --concurrency 2``, prefork), with
                            OPTIMLAB_TORCH_THREADS=1, SQLite and the filesystem broker in a new
                            OPTIMLAB_HOME each round; timed from ``Client.sweep`` (the POST) to
                            ``Client.wait`` returning, on the first sweep after the workers
                            logged "ready."
  optimlab packed (warm)    the same sweep on the same service, other seeds
  optimlab separate (warm)  the same with ``execution="separate"``: one task per trial
  optuna                    a GridSampler study over (setting, seed) in SQLite storage, two fresh
                            ``python`` processes each running ``study.optimize(objective,
                            n_trials=30)``; the objective calls ``trial.report(val_loss, epoch)``
                            every epoch and returns the final val_loss; timed from launching the
                            processes to both exiting (their imports included: a user pays them).
                            The study is created before the clock starts.
  pool                      ``multiprocessing`` Pool(2), forked from this process after it has
                            trained once (so warm, like the warm workers), results in memory;
                            timed from creating the pool to the last result.

Rounds alternate the order of the arms (the service's arms run as one block, cold first). Within
a round the three service sweeps use three different blocks of 5 seeds, so a result cache could
never answer one from another; blocks rotate over rounds, and Optuna and the pool run the cold
arm's block, so after 3 rounds every arm has run the same 180 trials. The check: every arm's top 3
settings (mean final val_loss over the trials all arms ran) are the same set. Also printed: for
each optimlab arm, how long after the last job's ``finished_at`` (from the job listing) ``wait()``
returned (median over rounds). The table gives medians; the last line is the cold packed speedup.

    python bench/sweep_vs_optuna.py [--rounds 3] [--quick] [--batch-size 64] [--service up|worker]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.client import Client

PROCESSES = 2
SEEDS_PER_SETTING = 5
SEED_BLOCKS = 3  # one per service sweep of a round
TOP = 3
STUDY = "sweep"
COLD, WARM, SEPARATE = "optimlab packed (cold)", "optimlab packed (warm)", "optimlab separate (warm)"
OPTUNA, POOL = "optuna (sqlite, 2 procs)", "pool (2 procs, in memory)"
ARMS = (COLD, WARM, SEPARATE, OPTUNA, POOL)

SETTINGS: list[dict[str, Any]] = [
    {"name": name, "lr": lr, "params": params}
    for name, params, lrs in (
        ("sgd", {}, (0.03, 0.1, 0.3)),
        ("sgd", {"momentum": 0.9}, (0.003, 0.01, 0.03)),
        ("adam", {}, (3e-4, 1e-3, 3e-3)),
        ("rmsprop", {}, (1e-4, 3e-4, 1e-3)),
    )
    for lr in lrs
]

Trial = tuple[str, int]  # (setting, seed)


def setting_name(optimizer: Mapping[str, Any]) -> str:
    """A setting's short name, from the spec's optimizer (as submitted or as stored, defaults filled)."""
    momentum = (optimizer.get("params") or {}).get("momentum") or 0
    return optimizer["name"] + (f"+m{momentum:g}" if momentum else "") + f" lr={optimizer['lr']:g}"


def finite(loss: float | None) -> float:
    """A loss to rank by: a diverged run (None, nan, inf) ranks last."""
    return loss if loss is not None and math.isfinite(loss) else math.inf


def seeds_of(block: int) -> list[int]:
    return list(range(block * SEEDS_PER_SETTING, (block + 1) * SEEDS_PER_SETTING))


@dataclass(frozen=True)
class Workload:
    epochs: int
    batch_size: int

    def base(self) -> dict[str, Any]:
        return {
            "model": {"name": "mlp", "params": {"depth": 1, "width": 128}},
            "dataset": {"name": "digits"},
            "loss": "cross_entropy",
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "device": "cpu",
        }

    def specs(self, seeds: Sequence[int]) -> list[dict[str, Any]]:
        return [self.base() | {"optimizer": s, "seed": seed} for s in SETTINGS for seed in seeds]


@dataclass
class Run:
    """One arm in one round: wall seconds, each trial's final val_loss, the top settings, and
    (optimlab) how long after the last job's finished_at ``wait()`` returned."""

    arm: str
    seconds: float
    losses: dict[Trial, float]
    top: list[str]
    wait_after_finish_s: float | None = None


def top_of(losses: Mapping[Trial, float], keep: set[Trial] | None = None) -> list[str]:
    """The TOP settings by mean final val_loss over their seeds (over ``keep`` only, if given)."""
    per_setting: dict[str, list[float]] = {}
    for trial, loss in losses.items():
        if keep is None or trial in keep:
            per_setting.setdefault(trial[0], []).append(loss)
    return sorted(per_setting, key=lambda name: statistics.fmean(per_setting[name]))[:TOP]


def expect_all(arm: str, losses: Mapping[Trial, float], n: int) -> None:
    if len(losses) != n:
        raise RuntimeError(f"{arm}: {len(losses)} distinct trials finished, expected {n}")


# --- optimlab -----------------------------------------------------------------------------------


@contextmanager
def optimlab_service(home: Path, command: str) -> Iterator[Client]:
    """A fresh service with PROCESSES worker processes x one torch thread, its state in ``home``;
    yields a client once the API answers and the workers have logged that they are ready.

    ``up``: ``optimlab up --workers 2`` (two solo-pool workers, each logs "ready."); ``worker``:
    ``optimlab api`` + ``optimlab worker --concurrency 2`` (one prefork worker, one "ready.";
    its children warm up after it), both on SQLite and the filesystem broker."""
    from _harness import api_client, migrated_database, service_env, start, wait_workers_ready

    from service.client import Client
    from tests.servers import free_port

    home.mkdir(parents=True)
    port = free_port()
    env = service_env(OPTIMLAB_HOME=str(home), OPTIMLAB_TORCH_THREADS="1")
    log = home / "workers.log"
    with ExitStack() as stack:
        if command == "up":
            start(stack, ["up", "--workers", str(PROCESSES), "--port", str(port), "--log-level", "info"], env, log)
        else:
            env["OPTIMLAB_DATABASE_URL"] = migrated_database(stack, "sqlite", home)
            start(stack, ["api", "--port", str(port), "--log-level", "warning"], env, home / "api.log")
            worker = ["worker", "--queues", "cpu", "--gpus", "none", "--concurrency", str(PROCESSES)]
            start(stack, worker, env, log)
        api_client(stack, port)
        wait_workers_ready(log, PROCESSES if command == "up" else 1)
        yield stack.enter_context(Client(f"http://127.0.0.1:{port}"))


def run_sweep(client: Client, arm: str, work: Workload, seeds: list[int], execution: str) -> Run:
    """The sweep through the public client, timed from the POST to ``wait()`` returning."""
    from service.client import flatten, label

    started = time.perf_counter()
    created = client.sweep(
        work.base(), grid={"optimizer": SETTINGS}, seeds=seeds, name=f"bench {arm}", execution=execution
    )
    client.wait(created, progress=False)
    seconds = time.perf_counter() - started
    returned_at = time.time()
    jobs = client.jobs(sweep_id=created["id"], limit=created["n_jobs"])
    failed = [f"{j['id']} {j['status']}" for j in jobs if j["status"] != "succeeded"]
    if failed:
        raise RuntimeError(f"{arm}: jobs not succeeded: {failed}")
    losses = {
        (setting_name(j["spec"]["optimizer"]), j["spec"]["seed"]): finite(j["summary"]["final_val_loss"]) for j in jobs
    }
    expect_all(arm, losses, len(SETTINGS) * len(seeds))
    last = max(_timestamp(j["finished_at"]) for j in jobs)
    names = {label(flatten({"optimizer": s})): setting_name(s) for s in SETTINGS}
    board = client.leaderboard(created, metric="val_loss", which="final").sort_values("rank")
    top = [names[c] for c in board["configuration"][:TOP]]
    return Run(arm, seconds, losses, top, returned_at - last)


def _timestamp(iso: str) -> float:
    moment = dt.datetime.fromisoformat(iso)
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


# --- optuna -------------------------------------------------------------------------------------


def run_optuna(work: Workload, seeds: list[int], home: Path) -> Run:
    """Two fresh processes optimizing one GridSampler study in SQLite, timed launch to exit."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    home.mkdir(parents=True)
    storage = f"sqlite:///{home / 'optuna.db'}"
    optuna.create_study(study_name=STUDY, storage=storage, direction="minimize")
    n_trials = -(-len(SETTINGS) * len(seeds) // PROCESSES)
    command = [sys.executable, __file__, "--optuna-worker", storage, "--n-trials", str(n_trials)]
    command += ["--epochs", str(work.epochs), "--batch-size", str(work.batch_size)]
    command += ["--seeds", *map(str, seeds)]
    with (home / "workers.log").open("wb") as log:
        started = time.perf_counter()
        procs = [subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) for _ in range(PROCESSES)]
        codes = [proc.wait() for proc in procs]
        seconds = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"optuna workers exited {codes}; see {home / 'workers.log'}")
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(states=[optuna.trial.TrialState.COMPLETE])
    losses = {(setting_name(SETTINGS[t.params["setting"]]), t.params["seed"]): finite(t.value) for t in trials}
    expect_all(OPTUNA, losses, len(SETTINGS) * len(seeds))
    return Run(OPTUNA, seconds, losses, top_of(losses))


def optuna_worker(storage: str, n_trials: int, work: Workload, seeds: list[int]) -> None:
    """One Optuna process: the plain engine loop as the objective, reporting every epoch. No
    sampler seed: GridSampler maps trial numbers to grid points through a shuffle that must be
    the same in every process (its default)."""
    import optuna
    import torch

    from optim_engine import train

    torch.set_num_threads(1)
    grid: dict[str, list[int]] = {"setting": list(range(len(SETTINGS))), "seed": seeds}
    study = optuna.load_study(study_name=STUDY, storage=storage, sampler=optuna.samplers.GridSampler(grid))

    def objective(trial: optuna.Trial) -> float:
        setting = trial.suggest_categorical("setting", grid["setting"])
        seed = trial.suggest_categorical("seed", grid["seed"])
        spec = work.base() | {"optimizer": SETTINGS[setting], "seed": seed}
        result = train(spec, on_epoch=lambda m: trial.report(finite(m.val_loss), m.epoch), num_threads=1)
        return finite(result.history[-1].val_loss)

    study.optimize(objective, n_trials=n_trials)


# --- bare pool ----------------------------------------------------------------------------------


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _train_one(spec: dict[str, Any]) -> tuple[Trial, float]:
    from optim_engine import train

    result = train(spec, num_threads=1)
    return (setting_name(spec["optimizer"]), spec["seed"]), finite(result.history[-1].val_loss)


def warm_this_process(work: Workload) -> None:
    """Train once here (one thread, so no OpenMP team exists to break a fork): the pool's forked
    children start with the imports and the dataset a warm worker has."""
    _train_one(work.base() | {"optimizer": SETTINGS[0], "seed": 0, "epochs": 1})


def run_pool(work: Workload, seeds: list[int]) -> Run:
    """A forked Pool(2) over the specs, timed from its creation to the last result."""
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(PROCESSES, initializer=_one_thread) as pool:
        results = pool.map(_train_one, work.specs(seeds), chunksize=1)
        seconds = time.perf_counter() - started
    losses = dict(results)
    expect_all(POOL, losses, len(SETTINGS) * len(seeds))
    return Run(POOL, seconds, losses, top_of(losses))


# --- rounds, check, table -----------------------------------------------------------------------


def one_round(index: int, work: Workload, home: Path, command: str) -> list[Run]:
    """Every arm once, in an order rotated by ``index``; the service's sweeps in one block."""
    runs: list[Run] = []

    def service() -> None:
        with optimlab_service(home / f"optimlab-{index}", command) as client:
            runs.append(run_sweep(client, COLD, work, seeds_of(index % SEED_BLOCKS), "packed"))
            warm = [(WARM, "packed", index + 1), (SEPARATE, "separate", index + 2)]
            for arm, execution, block in warm if index % 2 == 0 else warm[::-1]:
                runs.append(run_sweep(client, arm, work, seeds_of(block % SEED_BLOCKS), execution))

    def optuna() -> None:
        runs.append(run_optuna(work, seeds_of(index % SEED_BLOCKS), home / f"optuna-{index}"))

    def pool() -> None:
        runs.append(run_pool(work, seeds_of(index % SEED_BLOCKS)))

    blocks: list[Callable[[], None]] = [service, optuna, pool]
    for block in blocks[index % 3 :] + blocks[: index % 3]:
        block()
    for run in runs:
        after = "" if run.wait_after_finish_s is None else f", wait() +{run.wait_after_finish_s * 1000:.0f} ms"
        print(f"round {index + 1}: {run.arm:<26} {run.seconds:7.2f} s{after}; top: {', '.join(run.top)}", flush=True)
    return runs


def check_rankings(runs: Sequence[Run]) -> bool:
    """Do all arms find the same top settings? Over the trials every arm ran (all of them after 3
    rounds), else over each arm's own trials; compared as sets (packed vs separate drift)."""
    merged: dict[str, dict[Trial, float]] = {arm: {} for arm in ARMS}
    for run in runs:
        merged[run.arm].update(run.losses)  # a trial run twice gives the same loss: the engine is deterministic
    common = set.intersection(*(set(losses) for losses in merged.values()))
    if common:
        basis = f"mean final val_loss over the {len(common)} trials every arm ran"
    else:
        basis = "mean final val_loss over each arm's own seeds (fewer than 3 rounds: not the same trials)"
    tops = {arm: top_of(losses, common or None) for arm, losses in merged.items()}
    agree = len({frozenset(top) for top in tops.values()}) == 1
    print(f"top {TOP} settings by {basis}:")
    for arm, top in tops.items():
        print(f"  {arm:<26} {', '.join(top)}")
    print(f"all arms agree on the top {TOP}: {'yes' if agree else 'NO'}")
    return agree


def print_table(runs: Sequence[Run]) -> dict[str, float]:
    seconds = {arm: [r.seconds for r in runs if r.arm == arm] for arm in ARMS}
    medians = {arm: statistics.median(values) for arm, values in seconds.items()}
    print(f"{'arm':<26} {'median s':>9} {'min':>7} {'max':>7} {'optuna/arm':>11} {'arm/pool':>9}")
    for arm in ARMS:
        m = medians[arm]
        print(
            f"{arm:<26} {m:>9.2f} {min(seconds[arm]):>7.2f} {max(seconds[arm]):>7.2f} "
            f"{medians[OPTUNA] / m:>10.2f}x {m / medians[POOL]:>8.2f}x"
        )
    for arm in (WARM, COLD, SEPARATE):
        after = [r.wait_after_finish_s * 1000 for r in runs if r.arm == arm and r.wait_after_finish_s is not None]
        listed = ", ".join(f"{a:.0f}" for a in after)
        print(f"{arm}: wait() returned {statistics.median(after):.0f} ms after the last finished_at (median; {listed})")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 15 (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--service", choices=["up", "worker"], default="up", help="optimlab up, or optimlab api + optimlab worker"
    )
    parser.add_argument("--optuna-worker", metavar="STORAGE", help=argparse.SUPPRESS)
    parser.add_argument("--n-trials", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.optuna_worker:
        optuna_worker(args.optuna_worker, args.n_trials, Workload(args.epochs, args.batch_size), args.seeds)
        return

    work = Workload(3 if args.quick else 15, args.batch_size)
    print(
        f"{len(SETTINGS)} settings x {SEEDS_PER_SETTING} seeds, digits MLP 64-128-10, batch {work.batch_size}, "
        f"{work.epochs} epochs; {PROCESSES} processes x 1 torch thread per arm (optimlab: {args.service}); "
        f"{os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.2f} at start)",
        flush=True,
    )
    warm_this_process(work)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="optimlab-vs-optuna-") as home:
        for index in range(args.rounds):
            runs += one_round(index, work, Path(home), args.service)
    agree = check_rankings(runs)
    medians = print_table(runs)
    print(f"optimlab packed (cold) vs optuna: {medians[OPTUNA] / medians[COLD]:.1f}x")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
