"""Cost caps and file inspection through the API: specs within every per-field cap that would
still ask a worker for tens of GB, hostile data files and paths, each a 422 naming the field;
and a large file's check never stalls the event loop.

The caps are checked before anything touches the database, so these run on SQLite only.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from optim_engine import _data_files
from optim_engine.settings import get_settings as engine_settings
from optim_engine.spec import JobSpec, cost_problems, dataset_info
from service import admission
from service.app import create_app
from service.db.migrate import upgrade
from service.db.models import Job
from service.db.session import make_engine, make_session_factory
from service.settings import Settings
from tests.conftest import seed_spec, service_settings
from tests.factories import job_body

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'optimlab.db'}"
    upgrade(url)
    return url


@pytest.fixture
def client(tmp_path: Path, database: str, data_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, database))) as test_client:
        yield test_client


def job_count(database: str) -> int:
    engine = make_engine(database)
    try:
        with make_session_factory(engine)() as session:
            return int(session.scalar(select(func.count()).select_from(Job)) or 0)
    finally:
        engine.dispose()


def rejected(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    """The one detail entry of the 422 that ``spec`` gets."""
    response = client.post("/v1/jobs", json=job_body(spec))
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    return dict(detail)


def file_spec(dataset: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    spec = seed_spec({"name": "sgd"}, model={"name": "logistic_regression"}, dataset=dataset, loss="cross_entropy")
    return spec | overrides


# --- cost caps ---------------------------------------------------------------------------------


def test_a_deep_wide_mlp_is_a_422_at_its_width(client: TestClient, database: str) -> None:
    spec = seed_spec({"name": "sgd"}, model={"name": "mlp", "params": {"depth": 64, "width": 16384}})
    detail = rejected(client, spec)
    assert detail["field"] == "spec.model.params.width"
    assert detail["type"] == "resource_cap"
    assert "over this server's cap of 50,000,000 (OPTIMLAB_MAX_PARAMETERS)" in detail["msg"]
    assert job_count(database) == 0


def test_a_huge_synthetic_dataset_is_a_422_at_its_features(client: TestClient, database: str) -> None:
    dataset = {"name": "synthetic_regression", "params": {"n_samples": 5_000_000, "n_features": 65536}}
    detail = rejected(client, seed_spec({"name": "sgd"}, model={"name": "linear"}, dataset=dataset))
    assert detail["field"] == "spec.dataset.params.n_features"
    assert "OPTIMLAB_MAX_DATASET_BYTES" in detail["msg"]
    assert job_count(database) == 0


def test_the_cost_caps_are_server_settings(tmp_path: Path, database: str, data_root: Path) -> None:
    settings = service_settings(tmp_path, database, max_parameters=10, max_steps=40)
    with TestClient(create_app(settings)) as capped:
        detail = rejected(capped, seed_spec({"name": "sgd"}))  # Linear(10, 1): 11 parameters, 3 x 13 steps
        assert detail["field"] == "spec.dataset.params.n_features"
        ok = seed_spec({"name": "sgd"}, model={"name": "linear", "params": {"bias": False}})
        assert capped.post("/v1/jobs", json=job_body(ok)).status_code == 201
        detail = rejected(capped, ok | {"epochs": 4})  # 4 epochs x 13 batches
        assert (detail["field"], detail["type"]) == ("spec.batch_size", "resource_cap")
        assert "52 steps, over this server's cap of 40 (OPTIMLAB_MAX_STEPS)" in detail["msg"]


def test_every_trial_of_a_sweep_is_held_to_the_cost_caps(client: TestClient, database: str) -> None:
    base = seed_spec({"name": "sgd"}, model={"name": "mlp", "params": {"depth": 64}})
    response = client.post("/v1/sweeps", json={"base": base, "grid": {"model.params.width": [8, 16384]}})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["combination"]["model.params.width"] == 16384
    assert detail["field"] == "spec.model.params.width"
    assert job_count(database) == 0


def test_the_default_caps_let_the_examples_through(client: TestClient) -> None:
    single = yaml.safe_load((EXAMPLES / "seed_sgd.yaml").read_text())
    assert client.post("/v1/jobs", json=job_body(single)).status_code == 201
    comparison = yaml.safe_load((EXAMPLES / "optimizer_comparison.yaml").read_text())
    assert client.post("/v1/sweeps", json=comparison).status_code == 201
    # Realistic models on the bundled datasets, vision included (its files are the host's concern).
    realistic = [
        {
            "model": {"name": "cnn", "params": {"channels": [64, 128, 256], "hidden": 512}},
            "dataset": {"name": "cifar10"},
        },
        {"model": {"name": "mlp", "params": {"depth": 4, "width": 2048}}, "dataset": {"name": "mnist"}},
        {"model": {"name": "mlp", "params": {"depth": 2, "width": 128}}, "dataset": {"name": "digits"}, "epochs": 1000},
    ]
    for overrides in realistic:
        spec = JobSpec.model_validate(seed_spec({"name": "adam"}, loss="cross_entropy") | overrides)
        assert cost_problems(spec, dataset_info(spec.dataset), admission.limits(Settings())) == [], overrides


# --- data files --------------------------------------------------------------------------------


def write_csv(path: Path, labels: list[str]) -> None:
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},{label}\n" for i, label in enumerate(labels)))


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("1e12", "more classes than this server's cap of 100000 outputs"),
        ("inf", "targets must be finite"),
        ("nan", "targets must be finite"),
        ("-1", "must be non-negative"),
    ],
)
def test_a_bad_class_label_in_a_csv_is_a_422_at_the_target(
    client: TestClient, data_root: Path, label: str, message: str
) -> None:
    write_csv(data_root / "labels.csv", ["0", "1", label, "1"])
    detail = rejected(client, file_spec({"name": "csv", "params": {"path": "labels.csv", "target": "label"}}))
    assert detail["field"] == "spec.dataset.params.target"
    assert message in detail["msg"]


@pytest.mark.parametrize("label", [1e12, float("inf"), float("nan")])
def test_a_bad_class_label_in_an_npz_is_a_422_at_y_key(client: TestClient, data_root: Path, label: float) -> None:
    np.savez(data_root / "labels.npz", x=np.zeros((4, 2)), y=np.array([0.0, 1.0, label, 1.0]))
    detail = rejected(client, file_spec({"name": "npz", "params": {"path": "labels.npz"}}))
    assert detail["field"] == "spec.dataset.params.y_key"


def test_the_largest_allowed_label_is_accepted(client: TestClient, data_root: Path) -> None:
    write_csv(data_root / "wide.csv", ["0", "1", "99999", "1"])
    spec = file_spec({"name": "csv", "params": {"path": "wide.csv"}})
    assert client.post("/v1/jobs", json=job_body(spec)).status_code == 201


def write_zeros_member(path: Path, n_bytes: int, level: int) -> None:
    """An .npz whose ``x`` is ``n_bytes`` of zeros, streamed into the zip (never in memory)."""
    rows = n_bytes // (8 * 16)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (rows, 16)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(8 << 20)
            for _ in range(rows * 16 * 8 // len(chunk)):
                member.write(chunk)
        with archive.open("y.npy", "w") as member:  # never reached: x is refused first
            np.lib.format.write_array(member, np.zeros(4, dtype=np.int64))


def test_a_zip_bomb_is_a_422_without_inflating_it(client: TestClient, data_root: Path) -> None:
    write_zeros_member(data_root / "bomb.npz", 1 << 30, level=1)
    assert (data_root / "bomb.npz").stat().st_size < 8 << 20  # 1 GiB of zeros in a few MB
    spec = file_spec({"name": "npz", "params": {"path": "bomb.npz"}})
    tracemalloc.start()
    try:
        detail = rejected(client, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert detail["field"] == "spec.dataset.params.path"
    assert f"is {(1 << 30) + 128} bytes uncompressed, over this server's cap" in detail["msg"]  # + .npy header
    assert peak < 32 << 20


def test_a_bomb_under_the_size_cap_is_refused_by_its_ratio(client: TestClient, data_root: Path) -> None:
    write_zeros_member(data_root / "small_bomb.npz", 64 << 20, level=9)
    detail = rejected(client, file_spec({"name": "npz", "params": {"path": "small_bomb.npz"}}))
    assert detail["field"] == "spec.dataset.params.path"
    assert "zip bomb" in detail["msg"]


def test_a_file_over_the_size_cap_is_a_422_at_its_path(
    client: TestClient, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_csv(data_root / "big.csv", ["0", "1"] * 100)
    monkeypatch.setenv("OPTIMLAB_MAX_FILE_BYTES", "1000")  # the engine's setting: the host check reads it
    engine_settings.cache_clear()  # (data_root clears it again on the way out)
    detail = rejected(client, file_spec({"name": "csv", "params": {"path": "big.csv"}}))
    assert detail["field"] == "spec.dataset.params.path"
    assert "over this server's cap of 1000 (OPTIMLAB_MAX_FILE_BYTES)" in detail["msg"]


@pytest.mark.parametrize(
    "path",
    ["a" * 300 + "/d.csv", "b" * 300 + ".csv", "nul\x00byte.csv", "."],
    ids=["long directory", "long file name", "NUL byte", "a directory"],
)
def test_an_unusable_path_is_a_422_at_path_not_a_500(client: TestClient, path: str) -> None:
    detail = rejected(client, file_spec({"name": "csv", "params": {"path": path}}))
    assert detail["field"] == "spec.dataset.params.path"
    # The API refuses a NUL byte in any stored string before the host check sees it.
    assert detail["type"] == ("spec_field" if "\x00" in path else "unavailable_on_host")
    assert len(detail["msg"]) < 300


# --- the event loop ----------------------------------------------------------------------------


def test_healthz_answers_while_a_large_csv_is_checked(
    client: TestClient, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = ",".join(f"{0.1234567 * i:.6f}" for i in range(10)) + ",1\n"
    (data_root / "large.csv").write_text("".join(f"f{i}," for i in range(10)) + "y\n" + row * (40_000_000 // len(row)))
    # As on slow storage: each chunk of rows takes a while to arrive, so the check lasts well over
    # the bound below however fast this machine parses (sleep yields the GIL, as I/O does).
    parse = _data_files._parse_rows

    def slow_parse(*args: Any) -> Any:
        time.sleep(0.25)
        return parse(*args)

    monkeypatch.setattr(_data_files, "_parse_rows", slow_parse)
    spec = file_spec({"name": "csv", "params": {"path": "large.csv", "target": "y"}})
    posted: dict[str, Any] = {}

    def post() -> None:
        started = time.perf_counter()
        posted["status"] = client.post("/v1/jobs", json=job_body(spec)).status_code
        posted["seconds"] = time.perf_counter() - started

    thread = threading.Thread(target=post)
    thread.start()
    latencies = []
    while thread.is_alive():
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    thread.join()
    assert posted["status"] == 201
    assert posted["seconds"] > 1.5  # the check was slow ...
    assert len(latencies) >= 5  # ... and healthz answered throughout,
    assert max(latencies) < 1.0  # each time promptly


# --- devices no worker serves ------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_job_without_gpu_workers_is_a_422_at_the_device(
    tmp_path: Path, database: str, data_root: Path, device: str
) -> None:
    with TestClient(create_app(service_settings(tmp_path, database, gpu_workers=False))) as cpu_only:
        detail = rejected(cpu_only, seed_spec({"name": "sgd"}) | {"device": device})
        assert (detail["field"], detail["type"]) == ("spec.device", "unavailable_on_host")
        assert detail["msg"] == admission.NO_GPU_WORKER
        assert "use device: cpu or auto" in detail["msg"]
        for fine in ("cpu", "auto"):
            accepted = cpu_only.post("/v1/jobs", json=job_body(seed_spec({"name": "sgd"}) | {"device": fine}))
            assert accepted.status_code == 201, accepted.text
        sweep = {"base": seed_spec({"name": "sgd"}), "grid": {"device": ["cpu", device]}}
        response = cpu_only.post("/v1/sweeps", json=sweep)
        assert response.status_code == 422, response.text
        (detail,) = response.json()["detail"]
        assert (detail["field"], detail["combination"]["device"]) == ("spec.device", device)
    assert job_count(database) == 2


def test_a_cuda_job_is_accepted_where_gpu_workers_may_serve_it(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=job_body(seed_spec({"name": "sgd"}) | {"device": "cuda"}))
    assert response.status_code == 201, response.text
    assert response.json()["queue"] == "gpu"
