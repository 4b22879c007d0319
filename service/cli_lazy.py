"""The ``optimlab`` command group: the commands that run the service (``up``, ``api``, ``worker``,
``db``, in ``service/cli_serve.py``) are loaded only when one of them runs.

``service/cli_serve.py`` imports the settings, and with them the engine's spec (0.3-0.6 s), which
a client command (``optimlab jobs ls``) or ``optimlab --help`` never needs. Help lists them from
``SERVE_COMMANDS`` (a test holds each line equal to the command's own help).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from typer.core import TyperCommand, TyperGroup

SERVE_PANEL = "Run the service"
SERVE_COMMANDS = {
    "up": "Everything on one machine: migrations, the API and worker processes, no servers to install.",
    "api": (
        "Serve the REST API (the database must be migrated: `optimlab db upgrade`). A host other than "
        "loopback needs OPTIMLAB_AUTH=keys."
    ),
    "worker": "Run a Celery worker: one pool process per GPU, each pinned to its own GPU.",
    "db": "Database schema.",
}
"""Each command's first help paragraph, for ``optimlab --help`` to list it without importing it."""


@cache
def serve_group() -> TyperGroup:
    """The commands of ``service/cli_serve.py`` as one click group (imported on first use)."""
    import typer

    from service.cli_serve import api, db_app, up, worker

    serve = typer.Typer(add_completion=False)
    for command in (up, api, worker):
        serve.command(rich_help_panel=SERVE_PANEL)(command)
    serve.add_typer(db_app, name="db", rich_help_panel=SERVE_PANEL)
    return typer.main.get_group(serve)


class LazyServeGroup(TyperGroup):
    """A typer group that lists ``SERVE_COMMANDS`` from their help lines and imports them only to
    run one (``resolve_command``), never to list them."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *SERVE_COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in SERVE_COMMANDS:  # listed in help: its line is enough
            placeholder = TyperCommand(cmd_name, help=SERVE_COMMANDS[cmd_name])
            placeholder.rich_help_panel = SERVE_PANEL
            return placeholder
        return found

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        if args and args[0] in SERVE_COMMANDS:
            return args[0], serve_group().commands[args[0]], args[1:]
        return super().resolve_command(ctx, args)
