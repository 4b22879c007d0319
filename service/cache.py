"""The result cache's key: which finished runs a new job may reuse instead of training.

A run is reused only when everything that decides its numbers is the same: the spec (its hash
covers every field, the seed included), the torch build, the kind of device and the optimlab
code. The worker writes the key of a succeeded job from what actually ran (``of_run``: the
run's reported environment); the API computes the key a new job *would* get (``Installed.expected``)
from the versions installed next to it and the device its queue implies. When the two sides
disagree (the workers run another torch or optimlab, ``auto`` resolved to MPS on a laptop) the
keys differ and the job trains: a disagreement costs a miss, never a wrong hit.

Pure functions: no database, no torch (the API reads versions from package metadata).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

DEVICE_KINDS = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class CacheKey:
    """What a cache hit guarantees the reused run shares with the job it stands in for.

    Attributes:
        spec_hash: ``JobSpec.spec_hash()``: every spec field, seed and device string included.
        torch: the torch version string (``2.13.0+cpu``: the build's local tag counts).
        device_kind: ``cpu``, ``cuda`` or ``mps`` (not the index: ``cuda:0`` and ``cuda:1`` agree).
        optimlab: the optimlab package version, standing for the engine's code.
    """

    spec_hash: str
    torch: str
    device_kind: str
    optimlab: str

    def digest(self) -> str:
        """SHA-256 (hex, 64 characters) of the parts, named, as canonical JSON."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def device_kind(device: str) -> str | None:
    """``cuda:1`` → ``cuda``; None for anything that is not a concrete device (``auto``)."""
    kind = device.split(":", 1)[0]
    return kind if kind in DEVICE_KINDS else None


@functools.cache
def installed_version(package: str) -> str | None:
    """A package's version from its metadata (no import: the API never imports torch); None
    when it is not installed. Read once per process (about half a millisecond each, paid by
    every job's final write otherwise): a process keeps running the code it loaded."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def of_run(spec_hash: str, environment: Mapping[str, Any] | None) -> str | None:
    """The key of a run that trained ``spec_hash`` where ``environment`` (``TrainResult.environment``:
    ``torch``, ``device``) says; None when the environment lacks either or optimlab has no
    version (such a run is never reused)."""
    environment = environment or {}
    torch, device = environment.get("torch"), environment.get("device")
    kind = device_kind(device) if isinstance(device, str) else None
    optimlab = installed_version("optimlab")
    if not isinstance(torch, str) or kind is None or optimlab is None:
        return None
    return CacheKey(spec_hash, torch, kind, optimlab).digest()


@dataclass(frozen=True)
class Installed:
    """The torch and optimlab installed next to the API: what it expects the workers to run."""

    torch: str
    optimlab: str

    def expected(self, spec_hash: str, device: str, queue: str) -> str:
        """The key a job of ``spec_hash`` for ``device`` would get once trained: these versions,
        and the device kind (``auto``: the kind its ``queue`` implies, ``gpu`` → cuda, ``cpu`` → cpu)."""
        kind = device_kind(device) or ("cuda" if queue == "gpu" else "cpu")
        return CacheKey(spec_hash, self.torch, kind, self.optimlab).digest()


def installed() -> Installed | None:
    """The versions installed here (read once per process); None when torch
    or optimlab is not installed: no lookup then."""
    torch, optimlab = installed_version("torch"), installed_version("optimlab")
    return Installed(torch, optimlab) if torch is not None and optimlab is not None else None
