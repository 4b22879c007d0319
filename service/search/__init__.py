"""Adaptive search for sweeps, driven through Optuna's ask/tell with our database as the record:
the search space (``space``) and the in-memory study rebuilt from stored trials (``study``), both
free of database code, and the sweep controller that reads and writes the records
(``controller``, imported by the dispatcher and the sweeps service, not re-exported here)."""

from service.search.space import (
    STRATEGIES,
    SearchParam,
    SearchSpace,
    Strategy,
    available_strategies,
    make_sampler,
    parse_space,
    suggest,
    to_optuna,
)
from service.search.study import TrialRecord, ask, rebuild, sampler_seed, to_study

__all__ = [
    "STRATEGIES",
    "SearchParam",
    "SearchSpace",
    "Strategy",
    "TrialRecord",
    "ask",
    "available_strategies",
    "make_sampler",
    "parse_space",
    "rebuild",
    "sampler_seed",
    "suggest",
    "to_optuna",
    "to_study",
]
