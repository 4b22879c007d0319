"""What every client command of ``optimlab`` shares: the connection options, the exit codes, the
two consoles (results on stdout, progress and messages on stderr, so ``id=$(optimlab submit ...
--wait)`` captures the id alone) and the client whose errors become one message and an exit code.

Imports only typer and rich: the commands import the client, yaml and pandas when they run, so
that every call starts in well under half a second.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from service.client import Client

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_REJECTED = 1  # the server refused the request (4xx): bad spec, unknown id, illegal transition
EXIT_USAGE = 2  # bad command line or input file (typer's own code for bad options)
EXIT_UNSUCCESSFUL = 3  # waited for: a job failed or was cancelled
EXIT_UNAVAILABLE = 4  # server, database or broker unreachable
EXIT_INTERNAL = 5  # a bug in optimlab itself: one line, not a traceback (OPTIMLAB_TRACEBACK=1 shows it)

UrlOption = Annotated[
    str | None, typer.Option("--url", envvar="OPTIMLAB_URL", help="Server (default http://127.0.0.1:8000).")
]
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="OPTIMLAB_API_KEY", help="Bearer key.")]
SWEEP_KEYS = frozenset({"base", "grid", "random", "space", "strategy"})
"""Keys a sweep file has and a job spec never does: ``submit`` names the right command for it."""


def out_width() -> int | None:
    """The width results are laid out for: ``COLUMNS`` when set (a script, a test), the terminal's
    on a terminal (None: rich measures it), else unbounded, so piped output is never cut or wrapped."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else 10_000


console = Console(stderr=True, soft_wrap=True)  # messages: a long one stays one line in a log or a pipe
out = Console(width=out_width())


def result(text: object) -> None:
    """One line of result on stdout, as it is (no markup, no wrapping), flushed at once: a script
    reading it (``id=$(optimlab sweep ...)``) has it before a wait that follows."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` (rich markup; escape what the user or server wrote) on stderr and return
    the exit to raise with ``code``."""
    console.print(message)
    return typer.Exit(code)


def checked_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host; otherwise a usage error at once (before any
    connection attempt), naming the option and the environment variable it came from."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is no number, or out of range
        valid = False
    if valid:
        return url
    hint = f"; did you mean http://{escape(url)}?" if "://" not in url else ""
    raise fail(f"[red]--url / OPTIMLAB_URL[/]: {escape(repr(url))} is not an http:// or https:// URL{hint}", EXIT_USAGE)


@contextmanager
def connected(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client whose errors become a message and an exit code, not a traceback. A server that
    refuses the first connection fails at once (``fail_fast``): a wrong port or a server not
    started is said in milliseconds, not after ten seconds of retries."""
    if url:
        checked_url(url)  # a usage error comes before the client's import (~0.1 s)
    from service import client as library  # looked up here: tests replace ``Client``

    target = url or library.DEFAULT_URL
    try:
        with library.Client(target, api_key=api_key, fail_fast=True) as client:
            yield client
    except library.Unavailable as exc:
        if exc.status_code == 0:  # no answer at all
            reason = escape(str(exc.__cause__ or exc.detail))
            raise fail(
                f"[red]unavailable[/]: no optimlab server answers at {escape(target)} ({reason}); "
                "start one with `optimlab up`, or point --url / OPTIMLAB_URL at yours",
                EXIT_UNAVAILABLE,
            ) from None
        raise fail(_rejection(exc), EXIT_UNAVAILABLE) from None
    except library.OptimlabError as exc:
        raise fail(_rejection(exc), EXIT_REJECTED) from None


def _rejection(exc: Any) -> str:
    """The server's error and each of its details on a line: ``spec.optimizer.lr: ...``; the
    same problem in many sweep combinations once, with how many and an example."""
    from service.client_display import detail_lines

    width = console.width - 2 if console.is_terminal or os.environ.get("COLUMNS", "").isdigit() else None
    lines = detail_lines(exc.detail, width=width)
    head = f"[red]{escape(exc.error)}[/] ({exc.status_code})"
    if len(lines) == 1 and not isinstance(exc.detail, list):
        return f"{head}: {escape(lines[0])}"
    return head + ":" + "".join(f"\n  {escape(line)}" for line in lines)


def load(path: Path) -> dict[str, Any]:
    """A YAML or JSON file's top-level mapping, or the usage exit code saying why not."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"[red]cannot read {escape(str(path))}[/]: {escape(str(exc))}", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise fail(f"[red]{escape(str(path))}[/]: expected a mapping at the top level", EXIT_USAGE)
    return data


def finished_ok(statuses: list[str]) -> int:
    """The exit code of a wait: 3 when a job failed or was cancelled (diverged and pruned runs
    are results), else 0."""
    return EXIT_UNSUCCESSFUL if any(s in ("failed", "cancelled") for s in statuses) else EXIT_OK
