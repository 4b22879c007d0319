"""A sweep's expansion: its search (grid, random, seeds) over a base spec, as validated job specs,
and which of them train together in packs.

Pure functions, no database or web code: the sweeps service validates every expansion before it
creates anything, and tests exercise the expansion directly.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from optim_engine.packing import pack_key, unpackable
from optim_engine.spec import JobSpec, error_details
from service.schemas import json_integers
from service.spec_codec import decode, encode
from service.sweeps.schemas import SweepCreate


@dataclass(frozen=True)
class Trial:
    """One job of a sweep: its searched values, its seed and its validated spec."""

    config: dict[str, Any]
    seed: int
    spec: JobSpec
    config_hash: str

    def combination(self) -> dict[str, Any]:
        """What names this trial in an error: its searched values and its seed."""
        return dict(encode(self.config | {"seed": self.seed}))


class SweepInvalid(ValueError):
    """Some expansion is not a valid spec; ``problems`` names each combination and its fields, as
    ``{"combination": {...}, "errors": [{"field": ..., "msg": ...}, ...]}``."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(problems)} invalid combination(s)")
        self.problems = problems


def problem(combination: Mapping[str, Any], errors: Iterable[tuple[Sequence[str], str]]) -> dict[str, Any]:
    """One entry of ``SweepInvalid.problems``: the combination, and each (location, message)."""
    return {"combination": dict(combination), "errors": [{"field": ".".join(loc), "msg": msg} for loc, msg in errors]}


def count(sweep: SweepCreate) -> int:
    """How many jobs the sweep expands to, without expanding it."""
    grid_points = sum(math.prod(len(values) for values in grid.values()) for grid in sweep.grids())
    trials = sweep.random.n if sweep.random is not None else 1
    return grid_points * trials * len(sweep.seeds or [0])


def configurations(sweep: SweepCreate) -> Iterator[dict[str, Any]]:
    """Every configuration (path → value), grid points times random trials, in a stable order."""
    samples: list[dict[str, Any]] = [{}]
    if sweep.random is not None:
        rng = random.Random(sweep.random.seed)  # noqa: S311  (seeded on purpose: reproducible trials)
        samples = [
            {path: dist.sample(rng) for path, dist in sweep.random.params.items()} for _ in range(sweep.random.n)
        ]
    for grid in sweep.grids():
        paths = list(grid)
        for values in itertools.product(*(grid[p] for p in paths)):
            point = dict(zip(paths, values, strict=True))
            for sample in samples:
                yield copy.deepcopy(point) | sample


def expand(sweep: SweepCreate, max_problems: int = 10) -> list[Trial]:
    """Every job of the sweep, validated; ``SweepInvalid`` lists the combinations that fail."""
    trials: list[Trial] = []
    problems: list[dict[str, Any]] = []
    seeds: list[int | None] = list(sweep.seeds) if sweep.seeds else [None]
    for config in configurations(sweep):
        made, failed = expand_configuration(sweep.base, config, seeds)
        trials += made
        problems += failed[: max(max_problems - len(problems), 0)]
    if problems:
        raise SweepInvalid(problems)
    return trials


def expand_configuration(
    base: Mapping[str, Any], config: Mapping[str, Any], seeds: Sequence[int | None]
) -> tuple[list[Trial], list[dict[str, Any]]]:
    """One configuration's jobs, one per seed (None: the base's own), each a validated spec; and
    a ``problem`` for each seed whose spec is invalid. An adaptive sweep's trials are built here
    too, one configuration at a time."""
    trials: list[Trial] = []
    problems: list[dict[str, Any]] = []
    for seed in seeds:
        combination = dict(config) | ({"seed": seed} if seed is not None else {})
        try:
            spec_dict = apply(base, config)
            if seed is not None:
                spec_dict["seed"] = seed
            # "Infinity" and 3.0 for an integer in a grid, as in a job's spec
            spec = JobSpec.model_validate(json_integers(decode(spec_dict)))
        except (ValidationError, ValueError, TypeError) as exc:
            problems.append(problem(encode(combination), _errors(exc)))
            continue
        trials.append(Trial(dict(config), spec.seed, spec, config_hash(spec)))
    return trials, problems


def apply(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each path set to its value (shallow paths first, so ``optimizer`` then
    ``optimizer.lr`` compose); a null value removes the key, leaving the spec's default."""
    spec = copy.deepcopy(dict(base))
    for path, value in sorted(config.items(), key=lambda item: item[0].count(".")):
        _set(spec, path.split("."), copy.deepcopy(value), path)
    return spec


def _set(node: Any, keys: list[str], value: Any, path: str) -> None:
    key, rest = keys[0], keys[1:]
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise_path(path, f"no item {key} in a list of {len(node)}")
        index = int(key)
        if rest:
            _set(node[index], rest, value, path)
        else:
            node[index] = value
        return
    if not isinstance(node, dict):
        raise_path(path, f"{key!r} is inside a value that is not an object")
    if rest:
        child = node.setdefault(key, [] if rest[0].isdigit() else {})
        if isinstance(child, str) and key in ("loss",):  # `loss: mse` shorthand
            child = node[key] = {"name": child}
        _set(child, rest, value, path)
    elif value is None:
        node.pop(key, None)
    else:
        node[key] = value


def raise_path(path: str, message: str) -> None:
    raise ValueError(f"{path}: {message}")


def config_hash(spec: JobSpec) -> str:
    """SHA-256 of the spec without its seed: jobs that differ only in seed share it."""
    data = spec.model_dump(mode="json")
    data.pop("seed", None)
    canonical = json.dumps(encode(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _errors(exc: Exception) -> list[tuple[list[str], str]]:
    """A failed expansion's errors: the spec's fields (under "spec"), or the search's path."""
    if isinstance(exc, ValidationError):
        return [(["spec", *error["loc"]], error["msg"]) for error in error_details(exc.errors())]
    return [(["search"], str(exc))]


def plan_packs(trials: Sequence[Trial], execution: str, pack_max: int) -> list[str | None]:
    """Each trial's pack id (None: it runs as its own task).

    Trials with the same pack key are split into packs of at most ``pack_max``, as evenly as
    possible (60 trials and a cap of 32 give two packs of 30, not 32 + 28). Under ``auto`` a
    trial that cannot pack, or is alone with its key, runs separately; under ``packed`` such a
    trial is a ``SweepInvalid`` naming it and why.
    """
    packs: list[str | None] = [None] * len(trials)
    if execution == "separate":
        return packs
    problems = []
    groups: dict[str, list[int]] = {}
    for i, trial in enumerate(trials):
        reasons = unpackable(trial.spec)
        if reasons:
            why = [(("spec", *loc), f"cannot be packed: {msg}") for loc, msg in reasons]
            problems.append(problem(trial.combination(), why))
        else:
            groups.setdefault(pack_key(trial.spec), []).append(i)
    if execution == "packed" and problems:
        raise SweepInvalid(problems[:10])
    for members in groups.values():
        if len(members) < 2 and execution == "auto":
            continue
        n_packs = -(-len(members) // pack_max)
        for chunk in range(n_packs):
            pack_id = uuid.uuid4().hex
            for i in members[chunk::n_packs]:
                packs[i] = pack_id
    return packs
