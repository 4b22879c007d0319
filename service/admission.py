"""What a spec must pass at submission beyond its schema: this server's resource caps (per field,
and on what a run would cost: parameters, memory, dataset bytes, outputs, steps) and what this
host can provide (data files, extras, plugins). Jobs and sweeps (every trial) both check here.

Called from sync routes, so FastAPI runs it in its threadpool: inspecting a large data file
never blocks the event loop (``/healthz`` answers meanwhile). Keep it sync.
"""

from __future__ import annotations

from typing import NamedTuple

from optim_engine.spec import CostLimits, DatasetInfo, JobSpec, cost_problems, dataset_info, host_problems, static_info
from service.errors import InvalidFields, field_error
from service.settings import Settings


class SpecProblem(NamedTuple):
    """One field of a spec this server rejects: its location in the spec, why, and the error type."""

    loc: tuple[str, ...]
    msg: str
    type: str


def spec_problems(spec: JobSpec, settings: Settings) -> list[SpecProblem]:
    """The resource caps the spec exceeds and what this host lacks for it; empty when accepted."""
    caps = [SpecProblem(loc, msg, "resource_cap") for loc, msg in cap_problems(spec, settings)]
    host_found = host_problems(spec, settings.data_dir) + device_problems(spec, settings)
    host = [SpecProblem(loc, msg, "unavailable_on_host") for loc, msg in host_found]
    try:
        info = _shape(spec, settings, host_found)
    except ValueError as exc:  # DataFileError: the file changed since the host check read it
        host.append(SpecProblem(("dataset", "params", getattr(exc, "param", "path")), str(exc), "unavailable_on_host"))
        info = None
    if info is not None:
        caps += [SpecProblem(loc, msg, "resource_cap") for loc, msg in cost_problems(spec, info, limits(settings))]
    return caps + host


NO_GPU_WORKER = "no GPU worker serves this server (optimlab up started without --gpus); use device: cpu or auto"


def device_problems(spec: JobSpec, settings: Settings) -> list[tuple[tuple[str, ...], str]]:
    """A CUDA device when no worker of this server has a GPU (``OPTIMLAB_GPU_WORKERS=false``):
    refused here rather than failed on the worker that cannot run it."""
    if not settings.gpu_workers and spec.device.startswith("cuda"):
        return [(("device",), NO_GPU_WORKER)]
    return []


def limits(settings: Settings) -> CostLimits:
    """This server's bounds on what one run may cost."""
    return CostLimits(
        max_parameters=settings.max_parameters,
        max_model_bytes=settings.max_model_bytes,
        max_dataset_bytes=settings.max_dataset_bytes,
        max_outputs=settings.max_outputs,
        max_steps=settings.max_steps,
    )


def _shape(spec: JobSpec, settings: Settings, host: list[tuple[tuple[str, ...], str]]) -> DatasetInfo | None:
    """The dataset's shape for the cost caps: the spec's, or the file's as the host check just
    inspected it (cached); None when the file could not be inspected (the host check says why)."""
    info = static_info(spec.dataset)
    if info is not None or any(loc[:1] == ("dataset",) for loc, _ in host):
        return info
    return dataset_info(spec.dataset, settings.data_dir)


def check_spec(spec: JobSpec, settings: Settings) -> None:
    """Raise ``InvalidFields`` (a 422 naming each field under ``body.spec``) for any problem."""
    problems = spec_problems(spec, settings)
    if problems:
        raise InvalidFields([field_error(("body", "spec", *p.loc), p.msg, p.type) for p in problems])


def cap_problems(spec: JobSpec, settings: Settings) -> list[tuple[tuple[str, ...], str]]:
    """The server's resource caps, as (location, message) pairs like any other field error."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if spec.epochs > settings.max_epochs:
        problems.append((("epochs",), f"{spec.epochs} exceeds this server's cap of {settings.max_epochs}"))
    if spec.batch_size > settings.max_batch_size:
        problems.append((("batch_size",), f"{spec.batch_size} exceeds this server's cap of {settings.max_batch_size}"))
    n_samples = getattr(getattr(spec.dataset, "params", None), "n_samples", None)
    if n_samples is not None and n_samples > settings.max_samples:
        msg = f"{n_samples} exceeds this server's cap of {settings.max_samples}"
        problems.append((("dataset", "params", "n_samples"), msg))
    params = getattr(spec.model, "params", None)
    widths = [getattr(params, "width", None), getattr(params, "hidden", None), *getattr(params, "channels", [])]
    widest = max((w for w in widths if isinstance(w, int)), default=0)
    if widest > settings.max_model_width:
        msg = f"width {widest} exceeds this server's cap of {settings.max_model_width}"
        problems.append((("model", "params"), msg))
    return problems
