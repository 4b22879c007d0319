"""Auth from the command line: ``optimlab keys`` (create, list, revoke API keys on the database
directly, so the first admin key exists before any server does), and the auth check ``optimlab
api`` and ``optimlab up`` pass before they serve."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from service.cli_common import EXIT_REJECTED, EXIT_UNAVAILABLE, EXIT_USAGE, console, fail, result

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.settings import Settings

keys_app = typer.Typer(
    help="API keys, on the database directly (`optimlab db upgrade` first). Needs OPTIMLAB_AUTH=keys to matter.",
    no_args_is_help=True,
)


def serving_settings(host: str) -> Settings:
    """The settings to serve on ``host`` with, once the auth configuration passes the start-up
    check; otherwise a message naming the setting and ``EXIT_USAGE``, and nothing is started."""
    from service.auth.service import ConfigurationError, check_configuration
    from service.settings import get_settings  # here: the settings import the engine's spec (slow)

    settings = get_settings()
    try:
        check_configuration(settings, host)
    except ConfigurationError as exc:
        raise fail(f"[red]refusing to start[/]: {escape(str(exc))}", EXIT_USAGE) from None
    return settings


@contextmanager
def _session() -> Iterator[Session]:
    """A session on the configured database; an unreachable or unmigrated one is a message and
    ``EXIT_UNAVAILABLE``, not a traceback."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from service.db.session import make_engine, make_session_factory
    from service.settings import get_settings

    engine = make_engine(get_settings().resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            yield session
    except (OperationalError, ProgrammingError) as exc:
        message = f"[red]database unavailable or not migrated[/] (optimlab db upgrade): {escape(str(exc.orig))}"
        raise fail(message, EXIT_UNAVAILABLE) from None
    finally:
        engine.dispose()


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="Who the key acts as: the owner of what it creates.")],
    name: Annotated[str | None, typer.Option(help="What it is for: laptop, ci, ...")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="See and manage every owner's jobs, sweeps and keys.")] = False,
) -> None:
    """Create a key. Its token goes to stdout, alone and only this once: only its hash is stored."""
    from pydantic import ValidationError

    from service.auth import service as auth_service
    from service.auth.schemas import KeyCreate

    try:
        body = KeyCreate(owner=owner, name=name, admin=admin)
    except ValidationError as exc:
        for error in exc.errors():
            console.print(f"[red]--{error['loc'][0]}[/]: {escape(error['msg'])}")
        raise typer.Exit(EXIT_USAGE) from None
    with _session() as session:
        key, token = auth_service.create_key(session, body)
    console.print(
        f"key {key.id} for {escape(key.owner)}{' (admin)' if key.admin else ''}: the token is printed once; store it now"
    )
    result(token)


@keys_app.command("ls")
def keys_ls() -> None:
    """Every key, revoked ones too: id, owner, name, prefix, admin, dates (never a token)."""
    from service.auth import service as auth_service
    from service.cli_tables import print_table

    with _session() as session:
        keys = auth_service.list_keys(session)
    rows = [
        {
            "id": key.id,
            "owner": key.owner,
            "name": key.name or "-",
            "prefix": key.prefix,
            "admin": str(key.admin),
            "created_at": key.created_at.isoformat(timespec="seconds"),
            "revoked_at": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-",
        }
        for key in keys
    ]
    print_table(rows, ["id", "owner", "name", "prefix", "admin", "created_at", "revoked_at"])


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Revoke a key: its next request is a 401. Revoking a revoked key changes nothing."""
    from service.auth import service as auth_service

    with _session() as session:
        try:
            key = auth_service.revoke_key(session, key_id)
        except auth_service.KeyNotFound as exc:
            raise fail(f"[red]{exc.code}[/]: {exc.detail}", EXIT_REJECTED) from None
    assert key.revoked_at is not None
    console.print(f"key {key.id} of {escape(key.owner)} revoked at {key.revoked_at.isoformat(timespec='seconds')}")
