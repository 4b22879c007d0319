"""Schemathesis over the app's own OpenAPI document, in process (ASGI, no network): every operation
with every check schemathesis has (no 5xx, documented status codes, content types and headers,
response bodies that match their schemas, valid data accepted and invalid data rejected, auth
enforced, ...) through its examples, coverage and fuzzing phases, then its stateful phase, on
SQLite and on PostgreSQL, with auth off and on.

A finding is a bug in the code or in the schema, fixed there: no operation or check is excluded.
The example budget is fixed and generation derandomized, so a run is reproducible and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.schemas import OpenApiSchema

from service.app import create_app
from service.db.models import Base
from tests.conftest import service_settings

pytestmark = pytest.mark.slow

TOKEN = "fuzz-admin-token-0123456789"
AUTH: dict[str, dict[str, Any]] = {"off": {}, "keys": {"auth": "keys", "api_keys": [TOKEN]}}
"""Settings of each auth mode: none, and keys with an environment admin token."""

UNSTATED_RULES = frozenset(
    {"value_error", "spec_field", "resource_cap", "unavailable_on_host", "invalid_combination", "invalid_cursor"}
    | {"configuration_required", "unknown_configuration", "same_configuration", "different_problem", "empty_sweep"}
    | {"no_trajectories", "invalid_ids", "lr_conflict", "unknown_job", "not_a_range_test", "no_suggestion"}
    | {"mode_against_best", "too_many_configurations", "range_test_mismatch"}
    | {"search_conflict", "strategy_space"}
)
"""The 422 types of rules the code states and no JSON Schema can: validators' cross-field rules
(``value_error``, the spec's ``spec_field``), this server's caps, what this host has, a sweep's
expansions (its base is a free-form object), opaque cursors, and what the stored data decides
(which configuration a hash names, whether two sweeps pair, whether a job is a finished range
test, whether the ids of a list exist), and which search fields go together (a space with an
adaptive strategy and a budget; CMA-ES with a fixed numeric space). Every other type is pydantic's own
constraint (``missing``, ``string_pattern_mismatch``, ...), which the schema states: a 422 for one
of those on schema-valid data means the schema and the validation disagree."""

ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
"""positive_data_acceptance's default statuses for schema-valid data (5xx: not_a_server_error's)."""

CHECKS = {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}, "max_response_time": 15}
"""Every check is on by default but max_response_time, which needs a limit: 15 s catches a hang,
not a busy CI machine. Schema-valid data may get a 422, but only from an unstated rule
(``rejected_only_by_unstated_rules``)."""


def config(auth: str) -> schemathesis.Config:
    """The checks, and with auth on the token for the document's bearer scheme: schemathesis sends
    it as the credentials, and knows which requests it deliberately sends without (expecting 401)."""
    keys = {"auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}} if auth == "keys" else {}
    return schemathesis.Config.from_dict({"checks": CHECKS, **keys})


FUZZ = settings(
    max_examples=25, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
"""Fuzzing examples per operation, on top of the schema's examples and the coverage phase (which
schemathesis derives deterministically: boundaries and violations of every constraint)."""

STATEFUL = settings(
    max_examples=50,
    stateful_step_count=10,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@schemathesis.check
def rejected_only_by_unstated_rules(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, made exact for this API: a 422 to schema-valid data must cite only
    rules the schema cannot state; any other cited error is a constraint missing from the schema."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 422:
        return None
    if None in (case.path_parameters or {}).values():  # a link filled it from a null field: not schema data
        return None
    detail = response.json()["detail"]
    cited = {error.get("type") for error in detail} if isinstance(detail, list) else {"untyped detail"}
    if not cited <= UNSTATED_RULES:
        raise AssertionError(f"Schema-valid data rejected for {sorted(cited - UNSTATED_RULES)}: {response.text}")
    return None


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's fixture-loaded tests read and rename `Node._nodeid`, which pytest 9.2 no
    # longer sets; give them the node id to work with (it only names the subtests).
    request.node._nodeid = request.node.nodeid


@pytest.fixture(params=sorted(AUTH))
def auth(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app_schema(tmp_path: Path, database_url: str, auth: str) -> OpenApiSchema:
    """The document the app serves, bound to that app; schemathesis runs its lifespan and ends it
    after each test."""
    # Held long-polls (`?wait_s=60&until=done` on a job no worker runs) would only test patience:
    # the hold itself is tests/service/test_longpoll.py's; here every request answers within 0.2 s.
    app = create_app(service_settings(tmp_path, database_url, max_wait_s=0.2, **AUTH[auth]))
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=config(auth))


schema = schemathesis.pytest.from_fixture("app_schema")


@schema.parametrize()
@FUZZ
def test_every_operation_answers_as_documented(case: Any) -> None:
    case.call_and_validate()


def test_sequences_of_operations_answer_as_documented(app_schema: OpenApiSchema) -> None:
    """The stateful phase: chains of calls along the links schemathesis infers (a created job's id
    into GET, cancel and metrics), each response validated with every check."""
    session_factory = app_schema.app.state.session_factory

    class Sequences(app_schema.as_state_machine()):  # type: ignore[misc]
        def teardown(self) -> None:
            # Every sequence starts from an empty database: what a step draws depends on what the
            # API answered before, and Hypothesis replays sequences expecting the same draws.
            with session_factory() as session, session.begin():
                for table in reversed(Base.metadata.sorted_tables):
                    session.execute(table.delete())
            super().teardown()

    Sequences.run(settings=STATEFUL)
