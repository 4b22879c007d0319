"""Every random choice a run makes, derived from its seed in one place.

Initial weights depend only on (seed, model, dataset shape) and batch order only on
(seed, epoch, n): two specs that differ in optimizer or scheduler get the same weights and the
same batches (common random numbers), a resumed run gets the same batches as an uninterrupted
one, and a packed loop can rebuild any trial's weights and batches from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

_M = TypeVar("_M", bound=torch.nn.Module)

_MASK = (1 << 63) - 1


def _mix(*parts: int) -> int:
    # splitmix64-style mixing: nearby seeds and epochs give unrelated streams.
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        value ^= value >> 31
    return value


@contextmanager
def seeded(seed: int, stream: int) -> Iterator[None]:
    """Seed torch's global CPU RNG for one stream, restoring the caller's state afterwards.

    Only the CPU generator: ``torch.manual_seed`` would also queue a CUDA seeding, which records
    a stack trace (about 0.7 ms) while CUDA is uninitialised, and which ``fork_rng(devices=[])``
    would not undo."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(_mix(seed, stream))
        yield


INIT_STREAM = 1
DROPOUT_STREAM = 2
_ORDER_STREAM = 3


def init_weights(seed: int, build: Callable[[], _M]) -> _M:
    """Build a module on the CPU with the run's initial-weight stream."""
    with seeded(seed, INIT_STREAM):
        return build()


def dropout_seed(seed: int) -> int:
    """Seed for the global RNG while training (dropout and any other in-model randomness)."""
    return _mix(seed, DROPOUT_STREAM)


def seed_device(device: torch.device, seed: int) -> None:
    """Seed the global RNG a run on ``device`` draws from (dropout): the CPU generator alone for
    a CPU run, which spares ``torch.manual_seed``'s deferred CUDA seeding (see ``seeded``)."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` (1-based) visits the ``n`` training samples."""
    generator = torch.Generator().manual_seed(_mix(seed, _ORDER_STREAM, epoch))
    return torch.randperm(n, generator=generator)
