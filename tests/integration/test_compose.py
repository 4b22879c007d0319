"""docker-compose.yml, proven without a Docker engine: it validates against the Compose
specification, and each optimlab service's own command and environment, with the service
hosts mapped to this machine's PostgreSQL and Redis, migrates, serves, trains and monitors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.integration.conftest import ROOT, Api, Proc, assert_every_epoch_once, slow_spec, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.slow
COMPOSE = ROOT / "docker-compose.yml"
ADMIN_TOKEN = "compose-admin-token-0123456789"
DOT_ENV = {"OPTIMLAB_API_KEYS": ADMIN_TOKEN}
"""What an operator's .env holds: the admin token compose requires."""


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_compose_file_follows_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_declares_what_a_deployment_needs() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "flower"} <= set(services)
    for name in ("postgres", "redis", "api", "worker"):
        assert "healthcheck" in services[name], name
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert {"pgdata", "checkpoints", "data"} <= set(compose()["volumes"])


def test_compose_turns_auth_on_and_requires_an_admin_key() -> None:
    """The API listens on 0.0.0.0 in compose: keys are on, and without an admin token in .env
    compose refuses to start (``${OPTIMLAB_API_KEYS:?...}``) rather than serve an open API."""
    for name in ("migrate", "api", "worker", "flower"):
        environment = compose()["services"][name]["environment"]
        assert environment["OPTIMLAB_AUTH"] == "keys", name
        with pytest.raises(ValueError, match="OPTIMLAB_API_KEYS"):
            _interpolate(environment["OPTIMLAB_API_KEYS"], {})
        assert _interpolate(environment["OPTIMLAB_API_KEYS"], DOT_ENV) == ADMIN_TOKEN


def _interpolate(value: str, env: Mapping[str, str] = DOT_ENV) -> str:
    """Compose's ${NAME:-default} and ${NAME:?error} (unset or empty: the default, or an error)."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == "?":
            raise ValueError(f"{name}: {argument}")
        return argument

    return re.sub(r"\$\{(\w+):([-?])([^}]*)\}", substitute, value)


def _local_command(command: list[str], ports: dict[str, int]) -> list[str]:
    head, *rest = command
    runner = {"optimlab": [sys.executable, "-m", "service.cli"], "celery": [sys.executable, "-m", "celery"]}[head]
    args = []
    for arg in rest:
        for container_port, local in ports.items():
            arg = arg.replace(container_port, str(local))
        args.append(arg)
    return runner + args


def test_each_service_command_runs_a_job(tmp_path: Path, logs: Path, postgres: Any, redis_url: str) -> None:
    spec = compose()
    services = spec["services"]
    database = postgres.create_database()
    redis_index = 15
    redis.Redis.from_url(f"{redis_url}/{redis_index}").flushdb()
    hosts = {
        "@postgres:5432/optimlab": f"@{postgres.host}:{postgres.port}/{database}",
        "optimlab:optimlab@": "postgres@",  # the CI server trusts its postgres user
        "redis://redis:6379/0": f"{redis_url}/{redis_index}",
        "/var/lib/optimlab": str(tmp_path / "optimlab"),
    }
    ports = {"8000": free_port(), "5555": free_port()}

    def env_of(service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIMLAB_")}
        for key, value in services[service]["environment"].items():
            value = _interpolate(str(value))
            for container, local in hosts.items():
                value = value.replace(container, local)
            env[key] = value
        return env

    def start(service: str) -> Proc:
        return Proc(_local_command(services[service]["command"], ports), env_of(service), logs / f"{service}.log")

    migrate = start("migrate")
    assert migrate.popen.wait(60) == 0, migrate.output()
    running = [start(name) for name in ("api", "worker", "flower")]
    try:
        api = Api(f"http://127.0.0.1:{ports['8000']}")
        wait_for(api.up, 60, "the api service")
        assert api.http.get("/v1/jobs").status_code == 401  # keys are on
        api.http.headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        # The api's own healthcheck command (["CMD", "python", "-c", ...]) against the local port.
        healthcheck = services["api"]["healthcheck"]["test"]
        assert healthcheck[:2] == ["CMD", "python"]
        probe = [sys.executable, *[arg.replace("8000", str(ports["8000"])) for arg in healthcheck[2:]]]
        assert subprocess.run(probe, capture_output=True, check=False).returncode == 0, "api healthcheck"
        wait_for(lambda: "ready." in running[1].output(), 60, "the worker service")
        # The worker's own healthcheck (CMD-SHELL): it answers a ping addressed to it.
        kind, script = services["worker"]["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        script = script.replace("$$", "$").replace("celery ", f"{sys.executable} -m celery ", 1)
        env = env_of("worker") | {"HOSTNAME": socket.gethostname()}
        pinged = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        job = api.submit(slow_spec(5, n_samples=1024))
        done = api.wait_status(job["id"], "succeeded", "failed")
        assert done["status"] == "succeeded", done
        assert_every_epoch_once(api.metrics(job["id"]), 5)

        def flower_up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{ports['5555']}/healthcheck", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(flower_up, 60, "flower")
    finally:
        for proc in running:
            proc.stop()


def test_the_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["api"]["comand"] = ["optimlab", "api"]  # a typo compose would reject
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True)
    assert result.returncode != 0


def test_the_image_constraints_pin_every_runtime_dependency() -> None:
    """The Docker image installs with -c .ci/constraints.txt: each dependency (torch aside, which
    the Dockerfile pins itself) must be pinned there, or the image resolves it afresh."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["pytorch-optimizer"]]
    wanted += project["optional-dependencies"]["flower"]
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    names = {Requirement(req).name.lower().replace("_", "-") for req in wanted} - {"torch"}
    assert names <= pinned, f"not pinned in .ci/constraints.txt (bash .ci/constraints.sh): {sorted(names - pinned)}"
