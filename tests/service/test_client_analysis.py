"""The client's analysis methods against a server that answers with contract-shaped JSON: the
requests they send (paths, query parameters, bodies) and the DataFrames they return."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.client import Client, InvalidRequest
from tests.service import analysis_answers as answers


class Server:
    """A MockTransport that answers by path and records every request."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes[request.url.path]
        return answer(request) if callable(answer) else httpx.Response(200, json=answer)

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(self.requests[index].url.params)


@pytest.fixture
def server() -> Server:
    return Server({})


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client("http://test", transport=httpx.MockTransport(server), backoff=0.001) as client:
        yield client


def test_compare_asks_for_the_pair_and_returns_a_row_per_seed(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps/3/compare"] = answers.compare()
    frame = client.compare(3, "0f9e", "a1b2", b_sweep={"id": 4}, metric="val_accuracy", which="final")
    assert server.params() == {"a": "0f9e", "b": "a1b2", "b_sweep": "4", "metric": "val_accuracy", "which": "final"}
    assert list(frame.columns) == ["seed", "a", "b", "diff"]
    assert frame["seed"].tolist() == [0, 1, 2, 3, 4]
    assert frame.loc[frame["seed"] == 3, ["a", "b", "diff"]].iloc[0].tolist() == [0.31, 0.30, 0.01]
    assert frame.attrs["mean_diff"] == -0.036
    assert frame.attrs["t_ci"] == [-0.07487, 0.00287]
    assert (frame.attrs["wilcoxon_p"], frame.attrs["wilcoxon_method"]) == (0.125, "exact")
    assert frame.attrs["unpaired_a"] == [5]
    assert frame.attrs["excluded"][0]["reason"] == "diverged"
    assert frame.attrs["a"]["label"] == "adam lr=0.001"
    assert frame.attrs["verdict"] == "inconclusive"


def test_compare_sends_only_what_was_given(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps/3/compare"] = answers.compare()
    client.compare({"id": 3}, mode="max")
    assert server.params() == {"metric": "val_loss", "which": "best", "mode": "max"}
    assert server.requests[-1].method == "GET"


def test_the_matrix_has_configurations_as_rows_and_columns(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps/3/compare"] = answers.compare_matrix()
    matrix = client.compare_matrix(3, which="final")
    assert server.params() == {"metric": "val_loss", "which": "final"}, "no a or b: the all-pairs answer"
    labels = ["sgd lr=0.1", "adam lr=0.001", "adamw lr=0.001"]
    assert matrix.index.tolist() == labels
    assert matrix.columns.tolist() == labels
    assert matrix.loc["adam lr=0.001", "sgd lr=0.1"] == -0.036
    assert matrix.loc["sgd lr=0.1", "adam lr=0.001"] == 0.036
    assert matrix.loc["adamw lr=0.001", "adam lr=0.001"] == 0.006
    assert all(math.isnan(matrix.loc[label, label]) for label in labels)
    assert len(matrix.attrs["cells"]) == 6
    assert [c["n"] for c in matrix.attrs["configs"]] == [5, 5, 5]


def test_matrix_labels_stay_apart_when_two_configurations_share_one(server: Server, client: Client) -> None:
    body = answers.compare_matrix()
    body["configs"][2]["label"] = "adam lr=0.001"  # e.g. two configurations differing in a field the label omits
    server.routes["/v1/sweeps/3/compare"] = body
    matrix = client.compare_matrix(3)
    assert matrix.index.tolist() == ["sgd lr=0.1", f"adam lr=0.001 ({answers.ADAM[:8]})", "adam lr=0.001 (77aa88bb)"]
    assert matrix.loc["adam lr=0.001 (77aa88bb)", "sgd lr=0.1"] == -0.03


def test_divergence_has_a_row_per_group_and_lr(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps/3/divergence"] = answers.divergence()
    frame = client.divergence(3)
    assert server.params() == {"metric": "val_loss", "which": "final"}
    assert len(frame) == 6
    sgd = frame[frame["group"] == "sgd momentum=0.9"]
    assert sgd["lr"].tolist() == [0.01, 0.1, 1.0]
    assert sgd["fraction"].tolist() == [0.0, 0.0, 1.0]
    assert set(sgd["stable_max_lr"]) == {0.1}
    assert set(sgd["diverged_min_lr"]) == {1.0}
    adam = frame[frame["group"] == "adam"].set_index("lr")
    assert adam.loc[0.01, "diverged"] == 1
    assert adam.loc[0.01, "mean"] == pytest.approx(0.425)
    assert adam["diverged_min_lr"].isna().all(), "adam never diverged on every seed"
    assert frame.attrs["groups"][0]["lrs"][2]["jobs"][0]["status"] == "diverged"


def test_budget_has_a_row_per_group_and_k(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps/3/budget"] = answers.budget()
    frame = client.budget(3, metric="train_loss")
    assert server.params() == {"metric": "train_loss", "which": "best", "group_by": "optimizer"}
    assert list(frame.columns) == ["group", "n_trials", "k", "expected", "lo", "hi"]
    assert len(frame) == 8 + 5
    first = frame[(frame["group"] == "sgd") & (frame["k"] == 1)].iloc[0]
    assert (first["expected"], first["lo"], first["hi"], first["n_trials"]) == (0.545, 0.445, 0.6628, 8)
    assert frame[frame["group"] == "adam"]["k"].tolist() == [1, 2, 3, 4, 5]


def test_profiles_name_the_sweeps_in_one_parameter(server: Server, client: Client) -> None:
    server.routes["/v1/profiles"] = answers.profiles()
    body = client.profiles([1, {"id": 2}, 3])
    assert server.params() == {"sweeps": "1,2,3", "metric": "val_loss"}, "the server's default tolerance"
    assert body["epochs"]["unsolved"] == ["4"]
    client.profiles([1, 2], tolerance=0.1)
    assert server.params() == {"sweeps": "1,2", "metric": "val_loss", "tolerance": "0.1"}


def test_trajectories_and_results(server: Server, client: Client) -> None:
    server.routes |= {
        "/v1/sweeps/3/trajectories": answers.trajectories(),
        "/v1/jobs/5/result": {"job_id": 5, "status": "succeeded", "result": answers.range_test()},
        "/v1/jobs/6/result": {"job_id": 6, "status": "queued", "result": None},
    }
    assert client.trajectories(3)["paths"][1]["label"] == "sgd lr=0.0005 momentum=0.9"
    result = client.result({"id": 5})
    assert result is not None
    assert result["suggestions"]["valley"] == 0.0021
    assert client.result(6) is None


def _job(status: str, job_id: int = 9) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": status,
        "error": "CUDA out of memory" if status == "failed" else None,
        "summary": {"epochs_done": 0, "epochs_total": 1},
    }


def test_a_range_test_is_submitted_waited_for_and_its_result_returned(server: Server, client: Client) -> None:
    submitted: list[dict[str, Any]] = []

    def submit(request: httpx.Request) -> httpx.Response:
        submitted.append(json.loads(request.content))
        return httpx.Response(201, json=_job("queued"))

    statuses = iter(["running", "succeeded"])
    server.routes |= {
        "/v1/jobs": submit,
        "/v1/jobs/9": lambda request: httpx.Response(200, json=_job(next(statuses))),
        "/v1/jobs/9/result": {"job_id": 9, "status": "succeeded", "result": answers.range_test()},
    }
    spec = {"optimizer": {"name": "sgd", "lr": 0.1}, "lr_range_test": {"steps": 50}}
    found = client.range_test(spec, end_lr=1.0, progress=False, poll=0.001)
    assert submitted[0]["spec"]["lr_range_test"] == {"steps": 50, "end_lr": 1.0}
    assert submitted[0]["spec"]["optimizer"] == spec["optimizer"]
    assert found["job_id"] == 9
    assert found["suggestions"] == {"steepest": 0.00032, "valley": 0.0021, "min_over_10": 0.0167}
    assert found["stopped"] == "diverged"


def test_a_range_test_that_failed_says_so(server: Server, client: Client) -> None:
    server.routes |= {
        "/v1/jobs": _job("queued"),
        "/v1/jobs/9": _job("failed"),
        "/v1/jobs/9/result": {"job_id": 9, "status": "failed", "result": None},
    }
    with pytest.raises(RuntimeError, match="range test job 9 failed: CUDA out of memory"):
        client.range_test({"optimizer": {"name": "sgd", "lr": 0.1}}, progress=False)


def test_a_range_test_without_waiting_returns_the_queued_job(server: Server, client: Client) -> None:
    server.routes["/v1/jobs"] = _job("queued")
    job = client.range_test({"optimizer": {"name": "sgd", "lr": 0.1}}, wait=False, steps=20)
    assert job["status"] == "queued"
    assert json.loads(server.requests[0].content)["spec"]["lr_range_test"] == {"steps": 20}
    assert len(server.requests) == 1


def test_a_sweep_seeded_from_a_range_test_sends_lr_from(server: Server, client: Client) -> None:
    server.routes["/v1/sweeps"] = {"id": 1, "n_jobs": 5}
    base = {"optimizer": {"name": "sgd", "lr": 0.1}}
    client.sweep(base, seeds=[0], lr_from={"job_id": 12, "suggestion": "steepest", "points": 7, "factor": 3.0})
    client.sweep(base, seeds=[0], lr_from=12)
    client.sweep(base, seeds=[0])
    bodies = [json.loads(r.content) for r in server.requests]
    assert bodies[0]["lr_from"] == {"job_id": 12, "suggestion": "steepest", "points": 7, "factor": 3.0}
    assert bodies[1]["lr_from"] == {"job_id": 12}, "the server's defaults for the rest"
    assert "lr_from" not in bodies[2], "a server without range tests still takes a plain sweep"


def test_an_analysis_error_names_the_field(server: Server, client: Client) -> None:
    detail = [{"field": "query.a", "msg": "'ff' matches no configuration of the sweep"}]
    server.routes["/v1/sweeps/3/compare"] = lambda request: httpx.Response(
        422, json={"error": "invalid_request", "detail": detail}
    )
    with pytest.raises(InvalidRequest, match=r"query\.a: 'ff' matches no configuration"):
        client.compare(3, "ff", "a1")
