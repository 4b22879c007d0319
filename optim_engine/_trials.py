"""``train_trials(specs)`` and ``train(spec)``: the one place that picks the loop, plain or packed,
or a spec's own (an LR range test, a 2-D function)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from optim_engine import _loop
from optim_engine._packed import train_packed
from optim_engine._policy import STOP_POLL_S
from optim_engine._range_test import train_range_test
from optim_engine._surface import train_surface
from optim_engine.results import EpochMetrics, TrainResult
from optim_engine.spec import JobSpec, PointModel


def train(
    spec: JobSpec | dict[str, Any],
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 0.0,
    num_threads: int | None = None,
    stop_poll_s: float = STOP_POLL_S,
    may_checkpoint: Callable[[], bool] | None = None,
    should_prune: Callable[[EpochMetrics], bool] | None = None,
    stop_grace_s: float = 0.0,
) -> TrainResult:
    """Train one spec alone, with the loop that fits it: an LR range test's (``lr_range_test``),
    a 2-D function's (``point`` model), else the plain loop; the arguments are each loop's
    (``optim_engine._loop.train`` documents them). A range test reports no epochs and keeps no
    checkpoint; every result may carry ``artifacts``. Only the plain loop prunes
    (``should_prune``) and waits for an epoch's end to stop (``stop_grace_s``): a range test has
    no epochs, a 2-D function's run is one."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    loop: Callable[..., TrainResult]
    if spec.lr_range_test is not None:
        loop = train_range_test
    elif isinstance(spec.model, PointModel):
        loop = train_surface
    else:
        loop = partial(_loop.train, should_prune=should_prune, stop_grace_s=stop_grace_s)
    return loop(
        spec,
        on_epoch=on_epoch,
        should_stop=should_stop,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_s=checkpoint_every_s,
        num_threads=num_threads,
        stop_poll_s=stop_poll_s,
        may_checkpoint=may_checkpoint,
    )


def train_trials(
    specs: Sequence[JobSpec | dict[str, Any]],
    *,
    keys: Sequence[str] | None = None,
    packed: bool | None = None,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
    on_finish: Callable[[int, TrainResult], None] | None = None,
    should_stop: Callable[[], Collection[int]] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_s: float = 0.0,
    num_threads: int | None = None,
    stop_poll_s: float = STOP_POLL_S,
    may_checkpoint: Callable[[], bool] | None = None,
    should_prune: Callable[[int, EpochMetrics], bool] | None = None,
    stop_grace_s: float = 0.0,
) -> list[TrainResult]:
    """Train ``specs``, each as its own trial, with the loop that fits: the choice is made here only.

    ``train`` trains one spec alone (any model and optimizer, a range test, a 2-D function);
    the packed loop (``train_packed``) trains specs that ``can_pack`` accepts as one pack, a
    pack of one included (never a range test or a 2-D function: ``unpackable`` says why).
    Either way the callbacks and results speak of trials by their position in ``specs``.

    Args:
        specs: the trials' specs (``JobSpec`` or dicts that validate as one).
        keys: a stable name per trial; the pack checkpoint is keyed by them.
        packed: True: the packed loop; False: the plain loop (one spec); None: packed for more.
        on_epoch: called with (trial position, metrics) for each trial's finished epoch, before
            that epoch is checkpointed.
        on_finish: called once per trial with (trial position, result) as soon as it ends.
        should_stop: polled before each epoch and inside epochs at most every ``stop_poll_s``
            s (keep it cheap); returns the positions of trials to end as ``cancelled``, with
            their last whole epoch (a partial one is neither reported nor checkpointed).
        checkpoint_dir: resume from the checkpoint there (``checkpoint.pt``, or ``pack.pt`` for a
            pack) and write one after epochs.
        checkpoint_every_s, num_threads, stop_poll_s, may_checkpoint, stop_grace_s: as ``train``'s.
        should_prune: asked with (trial position, metrics) after each epoch but the last; True
            ends that trial as ``pruned``.

    Returns:
        One ``TrainResult`` per spec, in the order given.

    Raises:
        ValueError: ``packed`` False with not exactly one spec; bad ``keys``; specs that cannot pack.
    """
    hooks: dict[str, Any] = {"on_epoch": on_epoch, "on_finish": on_finish, "should_stop": should_stop}
    hooks["should_prune"] = should_prune
    control: dict[str, Any] = {"checkpoint_dir": checkpoint_dir, "checkpoint_every_s": checkpoint_every_s}
    control |= {"num_threads": num_threads, "stop_poll_s": stop_poll_s, "may_checkpoint": may_checkpoint}
    control |= {"stop_grace_s": stop_grace_s}
    if packed or (packed is None and len(specs) > 1):
        return train_packed(specs, keys=keys, **hooks, **control)
    if len(specs) != 1:
        raise ValueError(f"packed=False trains exactly one spec; got {len(specs)} (pass packed=True to pack them)")
    if keys is not None and len(keys) != 1:
        raise ValueError("keys: give one distinct key per spec")
    return [_train_alone(specs[0], hooks, control)]


def _train_alone(spec: JobSpec | dict[str, Any], hooks: dict[str, Any], control: dict[str, Any]) -> TrainResult:
    """``train`` behind ``train_packed``'s callbacks (``hooks``: on_epoch, on_finish,
    should_stop, should_prune), for the trial at position 0; ``control`` holds the keyword
    arguments both loops take alike."""
    on_epoch, on_finish, should_stop, should_prune = (
        hooks[name] for name in ("on_epoch", "on_finish", "should_stop", "should_prune")
    )
    result = train(
        spec,
        on_epoch=(lambda metrics: on_epoch(0, metrics)) if on_epoch is not None else None,
        should_stop=(lambda: 0 in should_stop()) if should_stop is not None else None,
        should_prune=(lambda metrics: should_prune(0, metrics)) if should_prune is not None else None,
        **control,
    )
    if on_finish is not None:
        on_finish(0, result)
    return result
