"""What a spec must pass at submission beyond its schema: this server's resource caps and what
this host can provide (data files, extras, plugins). Jobs and sweeps both check here."""

from __future__ import annotations

from typing import NamedTuple

from optim_engine.spec import JobSpec, host_problems
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
    host = [SpecProblem(loc, msg, "unavailable_on_host") for loc, msg in host_problems(spec, settings.data_dir)]
    return caps + host


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
