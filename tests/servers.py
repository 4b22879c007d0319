"""Real PostgreSQL and Redis servers for the tests, started from the installed binaries.

Without a server binary the tests that need it are skipped, except under CI=true, where a
missing server fails the run (CI installs them; see .ci/servers.sh).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing(what: str) -> None:
    message = f"{what} is not installed (CI installs it with .ci/servers.sh)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if shutil.which("initdb"):
        candidates.insert(0, str(shutil.which("initdb")))
    return Path(candidates[0]).parent if candidates else None


@dataclass
class Postgres:
    host: str
    port: int
    user: str = "postgres"
    pg_ctl: list[str] | None = None
    options: str = ""

    def stop(self) -> None:
        """Stop the server (an outage); ``start`` brings it back with its data."""
        assert self.pg_ctl is not None
        subprocess.run([*self.pg_ctl, "stop", "-m", "fast"], check=True, capture_output=True)

    def start(self) -> None:
        assert self.pg_ctl is not None
        subprocess.run([*self.pg_ctl, "start", "-o", self.options], check=True, capture_output=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return name


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    bindir = _pg_bindir()
    if bindir is None:
        _missing("PostgreSQL (initdb)")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="optimlab-pg-"))
    root.chmod(0o755)
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
    options += " -c full_page_writes=off -c max_connections=200"
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    subprocess.run([*pg_ctl, "start", "-o", options], check=True, capture_output=True)
    try:
        yield Postgres("127.0.0.1", port, pg_ctl=pg_ctl, options=options)
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    """A redis-server of the tests' own. ``stop`` and ``start`` make an outage on the same port;
    with ``appendonly`` its data (queued and unacknowledged messages) survives it, without it
    a restart comes back empty, as a Redis without persistence does."""

    port: int
    root: Path
    appendonly: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        persistence = ["--save", "", "--appendonly", "yes" if self.appendonly else "no"]
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root), *persistence],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): with ``appendonly`` the AOF is flushed, else nothing is kept."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def redis_instance(*, appendonly: bool = False) -> Iterator[RedisServer]:
    """A started ``RedisServer`` on a free port, stopped and deleted at the end."""
    if shutil.which("redis-server") is None:
        _missing("redis-server")
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="optimlab-redis-")), appendonly)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@contextmanager
def redis_server(*, appendonly: bool = False) -> Iterator[str]:
    """The URL of a fresh redis-server (see ``redis_instance``)."""
    with redis_instance(appendonly=appendonly) as server:
        yield server.url
