"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's own ``_put`` creates the ``.msg`` file, then writes it; its ``_get`` moves and reads any
``.msg`` file without taking the writer's lock, so a worker could read a message mid-write, fail
to decode it, crash and lose it (seen once under load). Here a message is written under a name
the reader ignores and renamed into place when complete.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "optimlab-filesystem"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu passes **kwargs
        """Put ``payload`` onto ``queue``: a hidden temporary file, then a rename (atomic)."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # not "<queue>.msg": never read
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

    DRAIN_S = 0.25
    """The longest one ``drain_events`` waits for a message. Celery's loop for transports without
    async support (every solo worker here) checks for a shutdown only between two calls, and asks
    for 2 s each: an idle ``optimlab up`` worker took that long to see its SIGTERM."""

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]  # kombu's two bases disagree
        super().drain_events(connection, timeout=self.DRAIN_S if timeout is None else min(timeout, self.DRAIN_S))


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
