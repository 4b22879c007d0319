"""Which specs can train together as one pack (``train_packed``), and why not. Imports no torch.

A pack stacks its trials' weights and steps them with batched matmuls and one vectorized
optimizer update, so its trials must share everything that shapes the computation (model,
dataset, loss, batch size, epochs, device, precision) and may differ in what a study varies:
optimizer, learning rate and its parameters, scheduler, seed, gradient clipping, early stopping
and the divergence policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optim_engine.spec import FieldProblem, JobSpec

PACKABLE_MODELS = ("linear", "logistic_regression", "mlp")
PACKABLE_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")

# The spec fields every trial of a pack shares.
_SHARED = ("model", "dataset", "loss", "batch_size", "epochs", "device", "precision")


@dataclass(frozen=True)
class PackCheck:
    """``can_pack``'s answer: ``ok``, or the reasons (each naming a trial and a field) why not."""

    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the specs can train as one pack."""
        return not self.reasons

    def __bool__(self) -> bool:
        return self.ok


def pack_key(spec: JobSpec) -> str:
    """A digest of the fields a pack's trials share: equal keys may pack together."""
    shared = spec.model_dump(mode="json", include=set(_SHARED))
    canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def unpackable(spec: JobSpec) -> list[FieldProblem]:
    """Why this one spec cannot be a pack's trial, each as ``(location, message)``; empty when it can."""
    problems: list[FieldProblem] = []
    if spec.model.name not in PACKABLE_MODELS:
        message = f"{spec.model.name} is not packable (packable: {', '.join(PACKABLE_MODELS)})"
        problems.append((("model", "name"), message))
    elif getattr(spec.model.params, "dropout", 0.0) > 0:
        message = "dropout is not packable (trials would need their own masks)"
        problems.append((("model", "params", "dropout"), message))
    if spec.optimizer.name not in PACKABLE_OPTIMIZERS:
        message = f"{spec.optimizer.name} is not packable (packable: {', '.join(PACKABLE_OPTIMIZERS)})"
        problems.append((("optimizer", "name"), message))
    if spec.compile:
        problems.append((("compile",), "a pack is not compiled; set compile to false"))
    if spec.precision != "fp32":
        problems.append((("precision",), f"{spec.precision} is not packable; packs train in fp32"))
    if spec.lr_range_test is not None:
        problems.append((("lr_range_test",), "a range test runs alone: it sets its own lr every step"))
    return problems


def can_pack(specs: Sequence[JobSpec | dict[str, Any]]) -> PackCheck:
    """Whether ``specs`` can train as one pack; otherwise every reason, each naming trial and field."""
    parsed = [s if isinstance(s, JobSpec) else JobSpec.model_validate(s) for s in specs]
    if not parsed:
        return PackCheck(["specs: a pack needs at least one trial"])
    reasons = [
        f"trial {i}: {'.'.join(loc)}: {message}" for i, spec in enumerate(parsed) for loc, message in unpackable(spec)
    ]
    first = parsed[0].model_dump(mode="json", include=set(_SHARED))
    for i, spec in enumerate(parsed[1:], start=1):
        dumped = spec.model_dump(mode="json", include=set(_SHARED))
        for name in _SHARED:
            if dumped[name] != first[name]:
                reasons.append(f"trial {i}: {name} differs from trial 0's; a pack's trials share it")
    return PackCheck(reasons)
