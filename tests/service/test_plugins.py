"""A broken optimizer plugin breaks neither the API's import nor its health: the catalog shows it
unavailable with the reason, and a job naming it is a 422 at ``optimizer``, not a 500."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

# Runs in a fresh interpreter: plugins load once, at import, and this one must not leak into
# the other tests' process.
_CLIENT_CODE = textwrap.dedent(
    """
    import json, pathlib, sys
    from fastapi.testclient import TestClient
    from service.app import create_app
    from service.db.migrate import upgrade
    from service.settings import Settings

    home = pathlib.Path(sys.argv[1])
    url = f"sqlite:///{home}/db.sqlite"
    upgrade(url)
    with TestClient(create_app(Settings(home=home, database_url=url))) as client:
        health = client.get("/healthz")
        catalog = client.get("/v1/catalog")
        job = client.post("/v1/jobs", json={"spec": {"optimizer": {"name": "broken_opt"}}})
        print(json.dumps({
            "health": health.status_code,
            "catalog": catalog.json(),
            "job": job.status_code,
            "job_body": job.json(),
            "torch": "torch" in sys.modules,
        }))
    """
)


def _broken_plugin(site: Path) -> None:
    """A distribution on ``site`` whose ``optimlab.optimizers`` entry point raises at import."""
    (site / "broken_opt_plugin.py").write_text("raise ImportError('broken_opt needs a library this host lacks')\n")
    dist = site / "broken_opt_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-opt-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[optimlab.optimizers]\nbroken_opt = broken_opt_plugin:plugin\n")


def _where(detail: dict[str, Any]) -> str:
    # The API names a field either as a dotted "field" or as a pydantic-style "loc" list.
    if "field" in detail:
        return str(detail["field"])
    return ".".join(str(part) for part in detail.get("loc", []))


def test_a_plugin_that_fails_to_import_does_not_break_the_api(tmp_path: Path) -> None:
    site, home = tmp_path / "site", tmp_path / "home"
    site.mkdir()
    home.mkdir()
    _broken_plugin(site)
    env = {"PYTHONPATH": f"{site}:{Path.cwd()}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT_CODE, str(home)], env=env, cwd=Path.cwd(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])

    assert result["health"] == 200
    entry = next(e for e in result["catalog"]["optimizers"] if e["name"] == "broken_opt")
    assert entry["available"] is False
    assert "ImportError: broken_opt needs a library this host lacks" in entry["reason"]
    assert any(e["name"] == "sgd" and e["available"] for e in result["catalog"]["optimizers"])

    assert result["job"] == 422, result["job_body"]
    details = result["job_body"]["detail"]
    located = [d for d in details if _where(d).split(".")[-1] == "optimizer"]
    assert located, details
    assert "broken_opt needs a library this host lacks" in located[0]["msg"]
    assert result["torch"] is False


# Model and dataset plugins through the API: the example plugin as an installed package would be,
# and broken ones. One interpreter per case, as above: plugins load once, at the spec's import.
_PLUGIN_CLIENT_CODE = textwrap.dedent(
    """
    import json, pathlib, sys
    from fastapi.testclient import TestClient
    from service.app import create_app
    from service.db.migrate import upgrade
    from service.settings import Settings

    home, data = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    url = f"sqlite:///{home}/db.sqlite"
    upgrade(url)

    def spec(model, dataset):
        return {"model": model, "dataset": dataset, "loss": "cross_entropy",
                "optimizer": {"name": "adam"}, "epochs": 1, "device": "cpu"}

    resnet = {"name": "small_resnet", "params": {"width": 4, "blocks": 1}}
    mine = {"name": "my_npz", "params": {"path": "digits.npz"}}
    seen = {}
    with TestClient(create_app(Settings(home=home, database_url=url, data_dir=data))) as client:
        seen["health"] = client.get("/healthz").status_code
        seen["catalog"] = client.get("/v1/catalog").json()
        posts = {
            "ok": spec(resnet, mine),
            "bad_width": spec({"name": "small_resnet", "params": {"width": 0}}, mine),
            "missing_file": spec(resnet, {"name": "my_npz", "params": {"path": "gone.npz"}}),
            "escaping_path": spec(resnet, {"name": "my_npz", "params": {"path": "../outside.npz"}}),
            "broken_model": spec({"name": "broken_model"}, {"name": "digits"}),
            "broken_data": spec({"name": "mlp"}, {"name": "broken_data"}),
        }
        for name, body in posts.items():
            response = client.post("/v1/jobs", json={"spec": body, "cache": False})
            seen[name] = [response.status_code, response.json()]
        sweep = client.post("/v1/sweeps", json={
            "base": spec(resnet, mine), "grid": {"optimizer.lr": [0.01, 0.003]}, "seeds": [0, 1], "cache": False,
        })
        seen["sweep"] = [sweep.status_code, sweep.json()]
        if sweep.status_code == 201:
            listed = client.get("/v1/jobs", params={"sweep_id": sweep.json()["id"], "limit": 10}).json()
            seen["sweep_packs"] = [job["pack_id"] for job in listed["items"]]
    seen["torch"] = "torch" in sys.modules
    print(json.dumps(seen))
    """
)


def _run_api_with_plugins(tmp_path: Path, site: Path) -> dict[str, Any]:
    from tests.optim_engine.test_model_plugins import EXAMPLE, digits_npz

    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    digits_npz(data / "digits.npz")
    env = {"PYTHONPATH": f"{site}:{EXAMPLE}:{Path.cwd()}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _PLUGIN_CLIENT_CODE, str(home), str(data)],
        env=env,
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _locs(body: dict[str, Any]) -> list[list[str]]:
    return [[str(part) for part in detail["loc"]] for detail in body["detail"]]


def test_model_and_dataset_plugins_through_the_api(tmp_path: Path) -> None:
    from tests.optim_engine.test_model_plugins import example_site

    site = example_site(tmp_path / "site")
    (site / "brokenplugins.py").write_text("raise ImportError('broken plugin needs a library this host lacks')\n")
    dist = site / "brokenplugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[optimlab.models]\nbroken_model = brokenplugins:model\n\n[optimlab.datasets]\nbroken_data = brokenplugins:data\n"
    )
    seen = _run_api_with_plugins(tmp_path, site)

    assert seen["health"] == 200
    models = {e["name"]: e for e in seen["catalog"]["models"]}
    datasets = {e["name"]: e for e in seen["catalog"]["datasets"]}
    assert models["small_resnet"]["available"] is True
    assert set(models["small_resnet"]["params_schema"]["properties"]) == {"width", "blocks"}
    assert datasets["my_npz"]["params_schema"]["properties"]["path"]["type"] == "string"
    assert models["broken_model"]["available"] is False
    assert "broken plugin needs a library this host lacks" in models["broken_model"]["reason"]
    assert datasets["broken_data"]["available"] is False

    status, job = seen["ok"]
    assert status == 201, job
    assert job["status"] == "queued"
    assert job["spec"]["model"] == {"name": "small_resnet", "params": {"width": 4, "blocks": 1}}
    status, body = seen["bad_width"]
    assert status == 422
    (loc,) = _locs(body)
    assert loc[:3] == ["body", "spec", "model"], body
    assert loc[-1] == "width", body
    for case in ("missing_file", "escaping_path"):
        status, body = seen[case]
        assert status == 422, (case, body)
        assert _locs(body) == [["body", "spec", "dataset", "params", "path"]], (case, body)
    assert "gone.npz" in seen["missing_file"][1]["detail"][0]["msg"]
    for case, where in (("broken_model", "model"), ("broken_data", "dataset")):
        status, body = seen[case]
        assert status == 422, (case, body)
        assert _locs(body)[0][-1] == where, (case, body)
        assert "broken plugin needs a library this host lacks" in body["detail"][0]["msg"]

    status, sweep = seen["sweep"]
    assert status == 201, sweep
    assert sweep["n_jobs"] == 4
    assert seen["sweep_packs"] == [None] * 4, "a plugin model declares no packable form: its trials run alone"
    assert seen["torch"] is False
