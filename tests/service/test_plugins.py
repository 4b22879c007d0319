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
