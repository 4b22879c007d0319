"""Alembic environment: metadata from the models, URL from optimlab's settings."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import event, pool

from service.db.models import Base
from service.db.session import make_engine
from service.settings import get_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # service.db.migrate passes the URL explicitly; the alembic CLI uses the settings.
    return str(config.attributes.get("url") or get_settings().resolved_database_url())


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def run_migrations_online() -> None:
    engine = make_engine(_url(), poolclass=pool.NullPool)
    if engine.dialect.name == "sqlite":
        # Batch mode alters a table by copying it and dropping the old one; with foreign keys on,
        # that DROP cascades to every row referencing it (SQLite's advice: turn them off to alter).
        event.listen(engine, "connect", _foreign_keys_off)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=True,  # SQLite ALTERs go through table copies
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
