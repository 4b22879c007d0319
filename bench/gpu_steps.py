"""The Python steps of bench/gpu_check.sh, and its one-line summaries.

    python bench/gpu_steps.py impl --device cuda --json PATH     what the engine reports vs what ran
    python bench/gpu_steps.py e2e --device cuda --json PATH --logs DIR   optimlab up with a GPU worker
    python bench/gpu_steps.py summary NAME RC STARTED ENDED STEP_JSON LOG SUMMARY_JSON --device cuda

``impl`` holds the engine's labels (``environment``: optimizer_implementation, dtype, compiled)
to what torch actually did in the same run, not to the spec: the optimizer kernels the profiler
saw (``_fused_adam``, ``_foreach_*``), the dtype the layers' outputs had under autocast, and the
graphs torch.compile captured and compiled. A silent fallback (a fused kernel that fell back to
the loop, autocast that did nothing, a compile that ran eager) makes the label and the run differ.

``e2e`` starts ``optimlab up --workers 1`` (``--gpus 0`` on a GPU: the worker pinned to it) and
sends through the API a job, a packed sweep, a bf16 job and a compiled job on the device, then
checks each one's epoch rows (1..epochs, once each) and reported environment.

``summary`` prints a step's one line (``ok``/``FAIL``, wall time, figures) and adds the step to
the JSON summary, from the figures the step wrote (or, for pytest, from its log).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROFILED = {"fused": "_fused_", "foreach": "_foreach_"}  # aten op names of each implementation


# --- impl: the implementation that ran is the one reported -----------------------------------------


def _spec(device: str, optimizer: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "mlp", "params": {"depth": 1, "width": 64}},
        "dataset": {"name": "digits"},
        "loss": "cross_entropy",
        "optimizer": optimizer,
        "epochs": 2,
        "batch_size": 64,
        "device": device,
    }
    return spec | overrides


def _ran_implementation(op_names: set[str]) -> str:
    """The optimizer implementation a run's aten ops show (fused Adam also bumps its step
    counters with a foreach op, so fused is asked first)."""
    if any(PROFILED["fused"] in name for name in op_names):
        return "fused"
    if any(PROFILED["foreach"] in name for name in op_names):
        return "foreach"
    return "for-loop"


def probe_optimizer(device: str, name: str) -> dict[str, Any]:
    """Train one epoch under the profiler: the label vs the kernels that ran."""
    from torch.profiler import ProfilerActivity, profile

    from optim_engine import train

    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the CPU side of each op: enough for names
        result = train(_spec(device, {"name": name, "lr": 1e-3}, epochs=1))
    ops = {event.key for event in prof.key_averages()}
    reported, ran = result.environment["optimizer_implementation"], _ran_implementation(ops)
    return {"reported": reported, "ran": ran, "ok": reported == ran}


def probe_bf16(device: str) -> dict[str, Any]:
    """A bf16 run: the dtype every Linear layer's output had, vs ``environment["dtype"]``."""
    import torch

    from optim_engine import train

    dtypes: set[str] = set()

    def record(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            dtypes.add(str(output.dtype).removeprefix("torch."))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train(_spec(device, {"name": "adamw", "lr": 1e-3}, precision="bf16"))
    finally:
        handle.remove()
    reported = result.environment["dtype"]
    ok = reported == "bfloat16-autocast" and dtypes == {"bfloat16"} and result.outcome == "completed"
    return {"reported": reported, "linear_outputs": sorted(dtypes), "ok": ok}


def probe_compile(device: str) -> dict[str, Any]:
    """A compiled run: graphs torch.compile captured and handed to its backend, and breaks."""
    from torch._dynamo.utils import counters

    from optim_engine import train

    counters.clear()
    started = time.perf_counter()
    result = train(_spec(device, {"name": "sgd", "lr": 0.1}, compile=True))
    graphs = counters["stats"]["unique_graphs"]
    compiled = counters["aot_autograd"]["ok"]  # graphs the backend compiled (not run eagerly)
    breaks = sum(counters["graph_break"].values())
    reported = result.environment["compiled"]
    ok = reported is True and graphs > 0 and compiled > 0 and result.outcome == "completed"
    seconds = round(time.perf_counter() - started, 1)
    return {"reported": reported, "graphs": graphs, "compiled": compiled, "breaks": breaks, "s": seconds, "ok": ok}


def run_impl(device: str) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "adam": probe_optimizer(device, "adam"),
        "rmsprop": probe_optimizer(device, "rmsprop"),
        "bf16": probe_bf16(device),
        "compile": probe_compile(device),
    }
    if device.startswith("cuda"):  # what torch ships on CUDA: a fused Adam, no fused RMSprop
        figures["adam"]["ok"] &= figures["adam"]["ran"] == "fused"
        figures["rmsprop"]["ok"] &= figures["rmsprop"]["ran"] == "foreach"
    return figures | {"ok": all(probe["ok"] for probe in figures.values())}


# --- e2e: optimlab up with a worker on the device ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _service(device: str, logs: Path) -> Iterator[Any]:
    """``optimlab up --workers 1`` in a fresh home, its worker on GPU 0 when ``device`` is cuda;
    yields a client once the API answers and the worker said it is ready."""
    from bench._harness import api_client, service_env, start, wait_workers_ready
    from service.client import Client

    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="optimlab-gpu-check-")))
        port, log = _free_port(), logs / "e2e_up.log"
        gpus = "0" if device.startswith("cuda") else "none"
        env = service_env(OPTIMLAB_HOME=str(home), OPTIMLAB_RESULT_CACHE="false")
        start(stack, ["up", "--port", str(port), "--workers", "1", "--gpus", gpus], env, log)
        api_client(stack, port, timeout=30)
        wait_workers_ready(log, 1, timeout=180)  # a GPU worker warms up on CUDA before it reports ready
        yield stack.enter_context(Client(f"http://127.0.0.1:{port}", timeout=60))


def _rows_ok(client: Any, job: dict[str, Any], epochs: int) -> bool:
    """Every epoch 1..epochs stored once, with a finite train loss."""
    frame = client.metrics(job)
    return sorted(frame["epoch"].tolist()) == list(range(1, epochs + 1)) and bool(frame["train_loss"].notna().all())


def _check_job(client: Any, job: dict[str, Any], epochs: int, device: str, expect: dict[str, Any]) -> dict[str, Any]:
    env = job.get("environment") or {}
    labels = {key: env.get(key) for key in expect}
    ok = (
        job["status"] == "succeeded"
        and str(env.get("device", "")).startswith(device)
        and labels == expect
        and _rows_ok(client, job, epochs)
    )
    return {"id": job["id"], "status": job["status"], "device": env.get("device"), **labels, "ok": ok}


def _check_sweep(client: Any, sweep: dict[str, Any], epochs: int, device: str) -> dict[str, Any]:
    jobs = client.jobs(sweep_id=sweep["id"])
    packs = {job["pack_id"] for job in jobs}
    checked = [
        _check_job(client, client.job(job), epochs, device, {"optimizer_implementation": "packed"}) for job in jobs
    ]
    ok = len(jobs) == sweep["n_jobs"] and None not in packs and len(packs) == 1 and all(c["ok"] for c in checked)
    return {"id": sweep["id"], "jobs": len(jobs), "packs": len(packs), "ok": ok}


def run_e2e(device: str, logs: Path, epochs: int, timeout: float) -> dict[str, Any]:
    """A job, a packed sweep, a bf16 job and a compiled job through the API; each one's rows."""
    base = _spec(device, {"name": "adam", "lr": 1e-3}, epochs=epochs)
    expected: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "job": (base, {"optimizer_implementation": "fused", "dtype": "float32", "compiled": False}),
        "bf16": ({**base, "precision": "bf16"}, {"dtype": "bfloat16-autocast"}),
        "compile": ({**base, "compile": True}, {"compiled": True}),
    }
    lrs = [1e-3, 3e-3, 1e-2, 3e-2] if device.startswith("cuda") else [1e-3, 1e-2]
    with _service(device, logs) as client:
        submitted = {name: client.submit(spec) for name, (spec, _) in expected.items()}
        sweep = client.sweep(base, grid={"optimizer.lr": lrs}, seeds=[0, 1], execution="packed")
        figures: dict[str, Any] = {}
        for name, job in submitted.items():
            done = client.wait(job, progress=False, timeout=timeout)
            figures[name] = _check_job(client, done, epochs, device, expected[name][1])
        client.wait(sweep, progress=False, timeout=timeout)
        figures["sweep"] = _check_sweep(client, sweep, epochs, device)
    return figures | {"ok": all(part["ok"] for part in figures.values())}


# --- summary: one line per step, and the JSON summary --------------------------------------------------

PYTEST_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def pytest_figures(log: Path) -> dict[str, int]:
    """The counts of pytest's last summary line (``3 passed, 1 skipped in 2.1s``)."""
    lines = [
        line for line in log.read_text(errors="replace").splitlines() if " in " in line and PYTEST_COUNTS.search(line)
    ]
    counts: dict[str, int] = {}
    for number, what in PYTEST_COUNTS.findall(lines[-1] if lines else ""):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(number)
    return counts


def _pytest_text(figures: dict[str, Any]) -> str:
    return ", ".join(f"{n} {what}" for what, n in figures.items()) or "no pytest summary"


def _packed_text(figures: dict[str, Any]) -> str:
    rows = figures.get("rows", {})
    speedups = " ".join(f"N={n}:{row['speedup']:.1f}x" for n, row in rows.items())
    worst = max((row["max_diff"] for row in rows.values()), default=float("nan"))
    mismatched = sum(row["mismatched"] for row in rows.values())
    return f"width {figures.get('width')}: {speedups}; max |diff| {worst:.1e}, {mismatched} outcome mismatches"


def _overhead_text(figures: dict[str, Any]) -> str:
    return (
        f"engine/hand loop (same impl) {figures['engine_vs_same_impl']:.3f}, engine/naive "
        f"{figures['engine_vs_naive']:.3f}, engine {figures['engine_ms_per_epoch']:.1f} ms/epoch"
    )


def _deps_text(figures: dict[str, Any]) -> str:
    where = f"python {figures['python']}, torch {figures['torch']}, cuda {figures['cuda']}"
    missing = f"; missing {figures['missing']}" if figures["missing"] else ""
    return f"{where}, {figures['wheels']} wheels installed{missing}"


def _mark(part: dict[str, Any]) -> str:
    return "" if part["ok"] else " FAIL"


def _impl_text(figures: dict[str, Any]) -> str:
    """What each probe saw next to what the engine reported (reported -> ran)."""
    adam, rmsprop, bf16, compiled = (figures[k] for k in ("adam", "rmsprop", "bf16", "compile"))
    return (
        f"adam {adam['reported']}->{adam['ran']}{_mark(adam)}, rmsprop {rmsprop['reported']}->{rmsprop['ran']}"
        f"{_mark(rmsprop)}, bf16 {bf16['reported']}->Linear out {'/'.join(bf16['linear_outputs'])}{_mark(bf16)}, "
        f"compile {compiled['reported']}->{compiled['compiled']} graphs compiled, {compiled['breaks']} breaks, "
        f"{compiled['s']}s{_mark(compiled)}"
    )


def _e2e_text(figures: dict[str, Any]) -> str:
    jobs = [
        f"{name} {part['status']} on {part['device']}{_mark(part)}"
        for name, part in figures.items()
        if isinstance(part, dict) and name != "sweep"
    ]
    sweep = figures.get("sweep")
    if sweep is not None:
        jobs.append(f"packed sweep {sweep['jobs']} jobs in {sweep['packs']} pack{_mark(sweep)}")
    return ", ".join(jobs) + " (epoch rows and reported environment checked)"


def step_ok(kind: str, rc: int, figures: dict[str, Any], device: str) -> bool:
    """A step passes when its command exited 0 and its own figures hold."""
    if rc != 0:
        return False
    if kind == "cuda-tests" and device.startswith("cuda"):  # every CUDA test must run: a skip there fails
        return figures.get("passed", 0) > 0 and not figures.get("skipped") and not figures.get("failed")
    if kind in ("cuda-tests", "engine-tests") and (figures.get("failed") or figures.get("error")):
        return False
    if kind == "packed":
        return bool(figures.get("agree"))
    return bool(figures.get("ok", True))


TEXTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "deps": _deps_text,
    "impl": _impl_text,
    "e2e": _e2e_text,
    "cuda-tests": _pytest_text,
    "engine-tests": _pytest_text,
    "overhead": _overhead_text,
    "packed": _packed_text,
}


def _last_line(log: Path) -> str:
    """The step's last words (an exception's message, usually), for a step without figures."""
    lines = (
        [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    )
    return lines[-1][:200] if lines else "(no output)"


def summarize(args: argparse.Namespace) -> None:
    """Print a step's one line and add it to the JSON summary (created on the first step)."""
    kind = args.name.removesuffix("-wide")
    wall_s = args.ended - args.started
    step_json, log = Path(args.step_json), Path(args.log)
    figures: dict[str, Any] = {}
    if kind in ("cuda-tests", "engine-tests") and log.exists():
        figures = pytest_figures(log)
    elif step_json.exists():
        figures = json.loads(step_json.read_text())
    ok = step_ok(kind, args.rc, figures, args.device)
    try:
        text = TEXTS[kind](figures) if figures else f"no figures; last line: {_last_line(log)}"
    except (KeyError, TypeError, ValueError) as exc:  # a partial file: say so, do not hide the step
        text = f"figures unreadable ({exc!r})"
    if args.rc in (124, 137):
        text = f"timed out; {text}"
    elif args.rc != 0:
        text = f"exit {args.rc}; {text}"
    print(f"{'ok' if ok else 'FAIL':<4} {args.name:<13} {wall_s:6.1f}s  {text}", flush=True)
    summary_path = Path(args.summary_json)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"device": args.device, "steps": {}}
    summary["steps"][args.name] = {"ok": ok, "rc": args.rc, "wall_s": round(wall_s, 1), "figures": figures}
    summary["ok"] = all(step["ok"] for step in summary["steps"].values())
    summary_path.write_text(json.dumps(summary, indent=1))


# --- command line ----------------------------------------------------------------------------------------


def _stop_on_sigterm() -> None:
    """``timeout`` ends a step with SIGTERM: exit normally, so the service started is stopped."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    impl = sub.add_parser("impl")
    e2e = sub.add_parser("e2e")
    for command in (impl, e2e):
        command.add_argument("--device", default="cuda")
        command.add_argument("--json", type=Path, required=True)
    e2e.add_argument("--logs", type=Path, required=True)
    e2e.add_argument("--epochs", type=int, default=3)
    e2e.add_argument("--timeout", type=float, default=120)
    summary = sub.add_parser("summary")
    for name in ("name", "rc", "started", "ended", "step_json", "log", "summary_json"):
        summary.add_argument(name, type={"rc": int, "started": float, "ended": float}.get(name, str))
    summary.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.command == "summary":
        summarize(args)
        return
    _stop_on_sigterm()
    if args.command == "impl":
        figures = run_impl(args.device)
    else:
        figures = run_e2e(args.device, args.logs, args.epochs, args.timeout)
    args.json.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
