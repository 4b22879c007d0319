"""The embedded broker writes each message atomically: a consumer polling the folder while
messages are written never sees half a message (kombu's own transport let it, and a worker
crashed on the partial file, losing that message)."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection

from service import embedded_broker


def channel(folder: Path, scheme: str = embedded_broker.SCHEME) -> Any:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    connection = Connection(f"{scheme}://", transport_options=options)
    return connection, connection.default_channel


def test_a_consumer_never_reads_a_message_mid_write(tmp_path: Path) -> None:
    producer_connection, producer = channel(tmp_path)
    consumer_connection, consumer = channel(tmp_path)
    payload = {"body": "x" * 2_000_000}  # big enough that a write takes a while
    received: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def consume() -> None:
        while not (done.is_set() and len(received) == 40):
            try:
                received.append(consumer._get("q"))
            except Empty:
                continue
            except Exception as exc:  # a message read mid-write does not decode
                errors.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    for _ in range(40):
        producer._put("q", payload)
    done.set()
    thread.join(60)
    producer_connection.release()
    consumer_connection.release()
    assert errors == []
    assert len(received) == 40
    assert all(message == payload for message in received)
    assert not list(tmp_path.glob(".*.part")), "no partial file is left behind"
