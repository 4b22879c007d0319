"""An adaptive sweep's trials for people, for ``service.client``: the Optuna study rebuilt from
GET /v1/sweeps/{id}/trials with the same code the controller uses (``service.search.study``), so
it holds what the database holds. Optuna is imported on first use; this imports neither torch nor
the web app."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def study_of(body: Mapping[str, Any]) -> optuna.Study:
    """The trials endpoint's answer as an ``optuna.Study`` (a detached copy: asking or telling it
    changes nothing in optimlab): each trial's params, state, value (a diverged mean is inf),
    intermediate values, and its job ids (and error, for an invalid one) as user attrs. A choice
    of objects or lists shows as the index of its value (``service.search.space.uses_indices``)."""
    from service.search.space import parse_space
    from service.search.study import TrialRecord, to_study

    if body.get("space") is None or body.get("objective") is None:
        raise ValueError(f"sweep {body['sweep_id']} is a {body['strategy']} sweep: only adaptive sweeps have trials")
    records = [
        TrialRecord(
            number=trial["number"],
            params=dict(trial["params"]),
            state=trial["state"],
            value=None if trial["value"] is None else float(trial["value"]),  # "Infinity" too
            intermediate={int(epoch): float(value) for epoch, value in trial["intermediate"].items()},
            user_attrs={"job_ids": trial["job_ids"]} | ({"error": trial["error"]} if trial["error"] else {}),
        )
        for trial in body["trials"]
    ]
    return to_study(records, parse_space(body["space"]), body["objective"]["direction"])
