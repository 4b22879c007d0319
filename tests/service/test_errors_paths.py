"""422 field names are JSON paths (``spec.optimizer.lr``, never pydantic's union tag in
``spec.optimizer.sgd.lr``), and a misspelt name or field gets "did you mean", over HTTP for jobs
and sweeps, and for names a registry gains after start-up (plugins)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from optim_engine.spec.errors import error_details
from service.app import create_app
from service.db.migrate import upgrade
from tests.conftest import seed_spec, service_settings
from tests.factories import job_body

SGD = {"name": "sgd", "lr": 0.01}
TAGS = ("sgd", "adam", "linear", "mlp", "synthetic_regression", "step_lr", "huber")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module: these requests are all refused before they touch the database."""
    tmp_path = tmp_path_factory.mktemp("errors")
    url = f"sqlite:///{tmp_path / 'optimlab.db'}"
    upgrade(url)
    with TestClient(create_app(service_settings(tmp_path, url))) as test_client:
        yield test_client


def details(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    return list(response.json()["detail"])


def entry(response: Any, field: str) -> dict[str, Any]:
    """The 422 detail entry whose field is ``field`` (failing with every field when none is)."""
    found = [e for e in details(response) if e["field"] == field]
    assert found, f"no entry for {field!r}: {[e['field'] for e in details(response)]}"
    return found[0]


def post_job(client: TestClient, **spec_change: Any) -> Any:
    return client.post("/v1/jobs", json=job_body(seed_spec(SGD) | spec_change))


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        ({"optimizer": {"name": "sgd", "lr": -1.0}}, "spec.optimizer.lr"),
        ({"optimizer": {"name": "adam", "params": {"betas": [1.5, 0.9]}}}, "spec.optimizer.params.betas.0"),
        ({"optimizer": {"name": "adam", "params": {"betas": [0.9, 1.5]}}}, "spec.optimizer.params.betas.1"),
        ({"optimizer": {"name": "sgd", "params": {"momentum": "0.9"}}}, "spec.optimizer.params.momentum"),
        ({"model": {"name": "mlp", "params": {"depth": -1}}}, "spec.model.params.depth"),
        ({"dataset": {"name": "synthetic_regression", "params": {"n_samples": 1}}}, "spec.dataset.params.n_samples"),
        ({"scheduler": {"name": "step_lr", "params": {"step_size": 0}}}, "spec.scheduler.0.params.step_size"),
        (
            {"scheduler": [{"name": "step_lr", "params": {"step_size": 1}}, {"name": "step_lr", "params": {}}]},
            "spec.scheduler.1.params.step_size",
        ),
        ({"loss": {"name": "huber", "delta": -1}}, "spec.loss.delta"),
    ],
)
def test_a_field_is_named_by_its_json_path_without_the_union_tag(
    client: TestClient, spec_change: dict[str, Any], field: str
) -> None:
    found = entry(post_job(client, **spec_change), field)
    assert found["loc"] == ["body", *field.split(".")]
    assert not any(f".{tag}." in f".{e['field']}." for e in details(post_job(client, **spec_change)) for tag in TAGS)


@pytest.mark.parametrize(
    ("spec_change", "field", "hint"),
    [
        (
            {"optimizer": {"name": "adamww", "lr": 0.1}},
            "spec.optimizer.name",
            "unknown optimizer 'adamww'; did you mean 'adamw'?",
        ),
        ({"model": {"name": "mpl"}}, "spec.model.name", "unknown model 'mpl'; did you mean 'mlp'?"),
        (
            {"dataset": {"name": "synthetic_regresion"}},
            "spec.dataset.name",
            "did you mean 'synthetic_regression'?",
        ),
        (
            {"scheduler": [{"name": "steplr"}]},
            "spec.scheduler.0.name",
            "unknown scheduler 'steplr'; did you mean 'step_lr'?",
        ),
        ({"loss": "msee"}, "spec.loss.name", "unknown loss 'msee'; did you mean 'mse'?"),
        ({"loss": {"name": "hubber"}}, "spec.loss.name", "did you mean 'huber'?"),
    ],
)
def test_an_unknown_name_suggests_the_closest_registered_one(
    client: TestClient, spec_change: dict[str, Any], field: str, hint: str
) -> None:
    found = entry(post_job(client, **spec_change), field)
    assert hint in found["msg"]
    assert found["type"] == "union_tag_invalid"


def test_an_unknown_name_with_nothing_close_lists_the_choices(client: TestClient) -> None:
    msg = entry(post_job(client, optimizer={"name": "zzz"}), "spec.optimizer.name")["msg"]
    assert "did you mean" not in msg
    assert "'sgd'" in msg
    assert "'adamw'" in msg


def test_a_missing_name_is_named_at_the_name(client: TestClient) -> None:
    found = entry(post_job(client, optimizer={"lr": 0.1}), "spec.optimizer.name")
    assert found["msg"].startswith("Field required: the optimizer's name, one of")
    assert "'sgd'" in found["msg"]


@pytest.mark.parametrize(
    ("spec_change", "field", "hint"),
    [
        ({"optimizer": {"name": "adamw", "learning_rate": 0.1}}, "spec.optimizer.learning_rate", "'lr'"),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, "spec.optimizer.momentum", "'params.momentum'"),
        ({"optimizer": {"name": "adam", "params": {"beta": [0.9, 0.9]}}}, "spec.optimizer.params.beta", "'betas'"),
        ({"model": {"name": "mlp", "params": {"widht": 8}}}, "spec.model.params.widht", "'width'"),
        ({"epoch": 3}, "spec.epoch", "'epochs'"),
    ],
)
def test_an_unknown_field_suggests_a_field_of_that_model(
    client: TestClient, spec_change: dict[str, Any], field: str, hint: str
) -> None:
    found = entry(post_job(client, **spec_change), field)
    name = field.rsplit(".", 1)[1]
    assert found["msg"] == f"unknown field {name!r}; did you mean {hint}?"
    assert found["type"] == "extra_forbidden"


def test_an_unknown_field_with_nothing_close_lists_the_fields(client: TestClient) -> None:
    msg = entry(post_job(client, optimizer={"name": "sgd", "zzz": 1}), "spec.optimizer.zzz")["msg"]
    assert msg == "unknown field 'zzz'; fields: name, lr, params"


def test_query_and_path_errors_keep_their_locations(client: TestClient) -> None:
    assert entry(client.get("/v1/jobs", params={"limit": -1}), "query.limit")["loc"] == ["query", "limit"]
    assert entry(client.get("/v1/jobs/0"), "path.job_id")["loc"] == ["path", "job_id"]


def test_a_sweep_body_error_is_a_json_path_too(client: TestClient) -> None:
    body = {"base": seed_spec(SGD), "grid": {"optimizer.lr": [0.1]}, "execution": "sideways"}
    assert entry(client.post("/v1/sweeps", json=body), "execution")["loc"] == ["body", "execution"]


def sweep_errors(client: TestClient, grid: dict[str, Any]) -> list[dict[str, Any]]:
    return details(client.post("/v1/sweeps", json={"base": seed_spec(SGD), "grid": grid}))


def test_a_misspelt_sweep_path_suggests_the_field(client: TestClient) -> None:
    (error,) = sweep_errors(client, {"optimizer.learnin_rate": [0.1]})
    assert error["field"] == "spec.optimizer.learnin_rate"
    assert "unknown field 'learnin_rate'; did you mean 'lr'?" in error["msg"]
    assert error["combination"] == {"optimizer.learnin_rate": 0.1}


def test_a_misspelt_name_in_a_grid_suggests_the_registered_one(client: TestClient) -> None:
    (error,) = sweep_errors(client, {"optimizer.name": ["adamww"]})
    assert error["field"] == "spec.optimizer.name"
    assert "did you mean 'adamw'?" in error["msg"]


def test_a_grid_of_whole_objects_reports_json_paths(client: TestClient) -> None:
    errors = sweep_errors(
        client, {"optimizer": [{"name": "sgd", "lr": -1}, {"name": "adam", "lr": 0.1, "params": {"betas": [0.9, 2]}}]}
    )
    assert {e["field"] for e in errors} == {"spec.optimizer.lr", "spec.optimizer.params.betas.1"}


# --- names a registry gains after import: the union as it is at error time -------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = 1


class _Builtin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["mlp"]
    params: _Params = Field(default_factory=_Params)


def _variant(class_name: str, tag: str) -> type[BaseModel]:
    """A variant like a plugin's: the tag ``tag`` (a name nothing in optimlab spells) and ``params``."""
    return type(
        class_name,
        (BaseModel,),
        {
            "__annotations__": {"name": Literal[tag], "params": _Params},
            "model_config": ConfigDict(extra="forbid"),
            "params": Field(default_factory=_Params),
        },
    )


def _spec_with(*variants: type[BaseModel]) -> type[BaseModel]:
    """A spec whose ``model`` union holds ``variants``, as a plugin registry builds its union."""
    union = Annotated[Union[tuple(variants)], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007

    class Spec(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: union  # type: ignore[valid-type]

    return Spec


def test_did_you_mean_reads_the_names_from_the_union_at_error_time() -> None:
    """A plugin's variant (a name nothing in optimlab spells) is suggested, and its own fields
    get paths without its tag: the names come from the validated type, not a list kept aside."""
    plugin = _variant("ResnetModel", "tiny_resnet")
    spec = _spec_with(_Builtin, plugin)
    with pytest.raises(ValidationError) as typo:
        spec.model_validate({"model": {"name": "tiny_resnt"}})
    (error,) = error_details(typo.value.errors(), spec)
    assert error["loc"] == ["model", "name"]
    assert "did you mean 'tiny_resnet'?" in error["msg"]
    with pytest.raises(ValidationError) as bad:
        spec.model_validate({"model": {"name": "tiny_resnet", "params": {"depht": 2}}})
    assert error_details(bad.value.errors(), spec) == [
        {
            "loc": ["model", "params", "depht"],
            "msg": "unknown field 'depht'; did you mean 'depth'?",
            "type": "extra_forbidden",
        }
    ]


def test_a_tag_spelt_like_a_field_is_still_told_from_it() -> None:
    """The walk reads the type, not the input: a variant named ``params`` keeps its ``params``
    field in the path, and loses only the tag."""
    same = _variant("SameModel", "params")
    spec = _spec_with(_Builtin, same)
    with pytest.raises(ValidationError) as bad:
        spec.model_validate({"model": {"name": "params", "params": {"depth": "x"}}})
    assert [e["loc"] for e in error_details(bad.value.errors(), spec)] == [["model", "params", "depth"]]
