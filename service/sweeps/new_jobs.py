"""A sweep's new jobs as rows to insert: which trials the result cache answers, the pack plan over
the others, and each row. One path for a sweep created at once and for an adaptive sweep's
trials, created pass by pass (``service.search.controller``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from optim_engine.spec import variant_names
from service import broker, cache
from service.db import result_cache
from service.settings import Settings
from service.spec_codec import encode, stored_spec
from service.sweeps.expansion import Trial, plan_packs
from service.sweeps.repository import NewJob


def new_jobs(
    session: Session,
    trials: Sequence[Trial],
    packs: Sequence[str | None],
    *,
    owner: str,
    execution: str,
    use_cache: bool,
    settings: Settings,
    trial_numbers: Sequence[int | None] | None = None,
) -> list[NewJob]:
    """The rows of ``trials`` (``packs``: their pack plan). Trials the result cache answers
    (``cached``) are created succeeded, copies of their earlier runs; only the others are packed
    (the plan is redone over them) and sent."""
    keys, sources = cached(session, trials, owner, use_cache, settings)
    if sources:
        packs = packs_of_misses(trials, packs, [key in sources for key in keys], execution, settings)
    numbers = trial_numbers if trial_numbers is not None else [None] * len(trials)
    return [
        NewJob(
            spec=stored_spec(trial.spec),
            spec_hash=trial.spec.spec_hash(),
            optimizer=variant_names(type(trial.spec.optimizer))[0],
            queue=broker.queue_for(trial.spec.device, settings),
            config=dict(encode(trial.config)),
            config_hash=trial.config_hash,
            pack_id=pack_id,
            cached_from=sources.get(key) if key is not None else None,
            cache_key=key if key in sources else None,
            trial_number=number,
        )
        for trial, pack_id, key, number in zip(trials, packs, keys, numbers, strict=True)
    ]


def cached(
    session: Session, trials: Sequence[Trial], owner: str, use_cache: bool, settings: Settings
) -> tuple[list[str | None], dict[str, int]]:
    """Each trial's result-cache key (None: no lookup: the cache is off for the sweep or the
    server, or torch is not installed here) and, by key, the earlier run of the same owner that
    answers it."""
    installed = cache.installed() if use_cache and settings.result_cache else None
    if installed is None:
        return [None] * len(trials), {}
    keys: list[str | None] = [
        installed.expected(t.spec.spec_hash(), t.spec.device, broker.queue_for(t.spec.device, settings)) for t in trials
    ]
    return keys, result_cache.find_sources(session, owner, keys)


def packs_of_misses(
    trials: Sequence[Trial], packs: Sequence[str | None], hit: Sequence[bool], execution: str, settings: Settings
) -> list[str | None]:
    """The pack plan redone over the trials that train (a served trial is in no pack): packs
    are filled with the misses only (under ``auto``, a miss left alone with its pack key runs alone)."""
    misses = [i for i, served in enumerate(hit) if not served]
    planned = plan_packs([trials[i] for i in misses], execution, settings.pack_max)
    repacked: list[str | None] = [None] * len(packs)
    for i, pack_id in zip(misses, planned, strict=True):
        repacked[i] = pack_id
    return repacked
