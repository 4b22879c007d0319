"""API keys and owners: keys stored hashed; every job and sweep records its owner; idempotency
keys unique per owner

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Existing jobs and sweeps get the owner '' (created while auth was off): only admin keys see them
once auth is on. On SQLite the unique constraints change by copying ``jobs`` and ``sweeps``
(batch mode); ``migrations/env.py`` turns foreign keys off for that, or dropping the old tables
would cascade to their epoch rows, tags and jobs.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("hash", name=op.f("uq_api_keys_hash")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), server_default="", nullable=False))
        batch_op.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_jobs_owner_idempotency_key", ["owner", "idempotency_key"])
        batch_op.create_index("ix_jobs_owner_created", ["owner", "created_at"], unique=False)
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), server_default="", nullable=False))
        batch_op.drop_constraint("uq_sweeps_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_sweeps_owner_idempotency_key", ["owner", "idempotency_key"])


def downgrade() -> None:
    """Downgrade schema. Fails if two owners used the same idempotency key (no longer unique)."""
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_constraint("uq_sweeps_owner_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_sweeps_idempotency_key", ["idempotency_key"])
        batch_op.drop_column("owner")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_owner_created")
        batch_op.drop_constraint("uq_jobs_owner_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch_op.drop_column("owner")
    op.drop_table("api_keys")
